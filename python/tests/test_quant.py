"""Quantization: retrieval with quantize= against the CLI, and the
bitsandbytes layout of tw.quantize."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

import tensorwire as tw
from conftest import write_safetensors

SCHEMES = list(tw.SCHEMES)


def model():
    rng = np.random.default_rng(3)
    return {
        "w32": rng.standard_normal((70, 130)).astype(np.float32),  # partial last blocks
        "w16": rng.standard_normal((4097,)).astype(np.float16),
        "w64": rng.standard_normal((65,)),
        "ids": np.arange(10, dtype=np.int64),  # stays raw
        "one": np.array(0.5, dtype=np.float32),
    }


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_retrieval_equals_the_cli(scheme, server_root, tmp_path, cli):
    write_safetensors(server_root / "m.safetensors", model())
    out = tmp_path / "cli.safetensors"
    with tw.Server(root=server_root) as srv:
        got = dict(tw.Client(srv.url).retrieve("m.safetensors", quantize=scheme))
        subprocess.run(
            [cli, "get", f"{srv.url}/objects/m.safetensors", "-o", str(out), "--mode", "container", "--quantize", scheme],
            check=True,
            capture_output=True,
            timeout=60,
        )
    want = load_file(str(out))
    assert set(got) == set(want) == set(model())
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, name
        np.testing.assert_array_equal(got[name], w, err_msg=name)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_dequantize_of_quantize_equals_quantized_retrieval(scheme):
    tensors = {k: v for k, v in model().items() if v.dtype.kind == "f"}
    with tw.Server(containers={"m": tensors}) as srv:
        got = dict(tw.Client(srv.url).retrieve("m", quantize=scheme))
    for name, x in tensors.items():
        if scheme in ("fp16", "bf16") and x.dtype == np.float16:
            np.testing.assert_array_equal(got[name], x)  # a 16-bit source travels raw
            continue
        q = tw.quantize(x, scheme)
        back = tw.dequantize(q)
        assert back.dtype == x.dtype and back.shape == x.shape
        np.testing.assert_array_equal(back, got[name], err_msg=name)


def test_4bit_layout_is_bitsandbytes():
    x = np.random.default_rng(1).standard_normal(64 * 5 + 7).astype(np.float32)
    q = tw.quantize(x, "nf4")
    assert q.block_size == 64 and q.codes.dtype == np.uint8 and q.absmax.dtype == np.float32
    assert q.codes.shape == ((x.size + 1) // 2,)
    blocks = [x[i : i + 64] for i in range(0, x.size, 64)]
    np.testing.assert_array_equal(q.absmax, [np.abs(b).max() for b in blocks])
    # element 2k in the high nibble: the largest |x| of a block decodes to +-absmax
    i = int(np.argmax(np.abs(x[:64])))
    nibble = (q.codes[i // 2] >> 4) if i % 2 == 0 else (q.codes[i // 2] & 0xF)
    assert nibble == (15 if x[i] > 0 else 0)  # nf4's table: code 15 is +1.0, code 0 is -1.0


def test_blockwise8_layout():
    x = np.random.default_rng(2).standard_normal(4096 + 100).astype(np.float32)
    q = tw.quantize(x, "blockwise8")
    assert q.block_size == 4096 and q.codes.shape == (x.size,) and q.absmax.shape == (2,)
    np.testing.assert_array_equal(q.absmax, [np.abs(x[:4096]).max(), np.abs(x[4096:]).max()])


def test_nested_layout():
    x = np.random.default_rng(4).standard_normal(64 * 300).astype(np.float32)
    q = tw.quantize(x, "nf4-nested")
    assert q.absmax.dtype == np.uint8 and q.absmax.shape == (300,)
    assert q.absmax2.shape == (2,) and q.offset.shape == (2,)
    back = tw.dequantize(q)
    assert np.abs(back - x).max() < 0.5
    assert q.nbytes < x.nbytes / 7


def test_casts():
    x = np.linspace(-1, 1, 10, dtype=np.float32)
    assert tw.quantize(x, "fp16").codes.dtype == np.float16
    np.testing.assert_array_equal(tw.dequantize(tw.quantize(x, "fp16")), x.astype(np.float16).astype(np.float32))


def test_rejects_what_does_not_apply():
    with pytest.raises(ValueError):
        tw.quantize(np.arange(10), "nf4")
    with pytest.raises(ValueError):
        tw.quantize(np.zeros(10, np.float16), "fp16")
    with pytest.raises(ValueError):
        tw.quantize(np.zeros(10, np.float32), "int2")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scalars_and_empty_tensors(scheme):
    for x in (np.zeros(0, np.float32), np.array(0.75, np.float32), np.zeros((2, 0), np.float64)):
        back = tw.dequantize(tw.quantize(x, scheme))
        assert back.shape == x.shape and back.dtype == x.dtype
    np.testing.assert_array_equal(tw.dequantize(tw.quantize(np.array(0.75, np.float32), scheme)), np.float32(0.75))
