"""tw.quantize / tw.dequantize against the bitsandbytes reference vectors
in shared/testdata/bnb (made with bitsandbytes 0.50.2 and a NumPy model of
its CUDA kernels; see the README there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tensorwire as tw
from conftest import REPO, raw_tensors

VECTORS = REPO.parent / "shared/testdata/bnb"
CASES = sorted(p.name for p in VECTORS.glob("*_n*.safetensors")) if VECTORS.is_dir() else []
_NP = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "U8": "u1"}


def load(name: str):
    out = {}
    for k, (dtype, shape, data) in raw_tensors(VECTORS / name).items():
        arr = np.frombuffer(data, dtype=_NP[dtype]).reshape(shape)
        if dtype == "BF16":
            arr = tw._to_array((k, "BF16", shape, _Bytes(data)))[1]
        out[k] = (dtype, arr)
    return out


class _Bytes:
    """Bytes presented through numpy's array interface, as a Buffer is."""

    def __init__(self, data: bytes) -> None:
        self._arr = np.frombuffer(data, np.uint8)
        self.__array_interface__ = self._arr.__array_interface__


def test_vectors_are_there():
    if not CASES:
        print(f"SKIPPED: no reference vectors at {VECTORS}")
        pytest.skip(f"no reference vectors at {VECTORS}")
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES)
def test_encoder_matches_the_cuda_kernels_and_decoder_both_producers(case):
    t = load(case)
    src_dtype, x = t["input"]
    if src_dtype == "BF16" and tw._ml_dtypes is None:
        pytest.skip("bf16 input needs ml_dtypes")
    if "fp16" in t:
        np.testing.assert_array_equal(tw.quantize(x, "fp16").codes.view(np.uint16), t["fp16"][1].view(np.uint16))
    q = tw.quantize(x, "blockwise8")
    np.testing.assert_array_equal(q.codes, t["cuda_model.b8.codes"][1], err_msg=f"{case} b8 codes")
    np.testing.assert_array_equal(q.absmax.view(np.uint32), t["cuda_model.b8.absmax"][1].view(np.uint32))
    for producer in ("cpu", "cuda_model"):
        theirs = tw.Quantized("blockwise8", src_dtype, x.shape, 4096, t[f"{producer}.b8.codes"][1], t[f"{producer}.b8.absmax"][1])
        restored = t.get(f"{producer}.b8.restored", t[f"{producer}.b8.deq"])[1]
        np.testing.assert_array_equal(tw.dequantize(theirs), restored, err_msg=f"{case} {producer} b8")
    for kind in ("fp4", "nf4"):
        q = tw.quantize(x, kind)
        np.testing.assert_array_equal(q.codes, t[f"cuda_model.{kind}.packed"][1].reshape(-1), err_msg=f"{case} {kind}")
        np.testing.assert_array_equal(q.absmax.view(np.uint32), t[f"cuda_model.{kind}.absmax"][1].view(np.uint32))
        for producer in ("cpu", "cuda_model"):
            packed = t[f"{producer}.{kind}.packed"][1].reshape(-1)
            theirs = tw.Quantized(kind, src_dtype, x.shape, 64, packed, t[f"{producer}.{kind}.absmax"][1])
            want = t[f"{producer}.{kind}.deq"][1]
            got = tw.dequantize(theirs)
            # equal values; the sign of a zero differs between bnb's kernels (see the README)
            np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32), err_msg=f"{case} {producer} {kind}")
