"""Round trips of every dtype, checked against safetensors' own reader."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from safetensors.numpy import load_file

import tensorwire as tw
from conftest import base_of, bf16_bits, every_dtype, ml_dtypes, raw_tensors, write_safetensors


@pytest.fixture
def plain_file(server_root):
    """Every dtype safetensors.numpy loads, scalars and empty tensors."""
    path = server_root / "plain.safetensors"
    write_safetensors(path, every_dtype())
    return path


@pytest.fixture
def bf16_file(server_root):
    """bf16 tensors (which safetensors.numpy cannot load), and one f32."""
    path = server_root / "bf16.safetensors"
    write_safetensors(path, {"f32": np.ones(3, np.float32)}, bf16={"bf16": bf16_bits(), "bf16_scalar": bf16_bits(1).reshape(())})
    return path


def check_plain(got, path):
    want = load_file(str(path))
    assert list(got) == list(raw_tensors(path)), "file order"
    assert set(got) == set(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype, name
        assert got[name].shape == w.shape, name
        np.testing.assert_array_equal(got[name], w, err_msg=name)


def check_bf16(got, path):
    raw = raw_tensors(path)
    assert set(got) == set(raw)
    for name, (dtype, shape, data) in raw.items():
        assert list(got[name].shape) == shape, name
        assert got[name].tobytes() == data, name
        if dtype == "BF16":
            want = np.dtype(ml_dtypes.bfloat16) if ml_dtypes is not None else np.dtype(np.uint16)
            assert got[name].dtype == want


def test_retrieve_file_under_root_every_dtype(server_root, plain_file, bf16_file):
    with tw.Server(root=server_root) as srv:
        c = tw.Client(srv.url)
        check_plain(dict(c.retrieve("plain.safetensors")), plain_file)
        check_bf16(dict(c.retrieve("bf16.safetensors")), bf16_file)


def test_retrieve_in_memory_container_every_dtype(plain_file, bf16_file):
    if ml_dtypes is None:
        pytest.skip("ml_dtypes is not installed: bf16 arrays cannot be given as bf16")
    bf16 = {"f32": np.ones(3, np.float32), "bf16": bf16_bits().view(ml_dtypes.bfloat16),
            "bf16_scalar": bf16_bits(1).reshape(()).view(ml_dtypes.bfloat16)}
    with tw.Server(containers={"plain": load_file(str(plain_file)), "bf16": bf16}) as srv:
        c = tw.Client(srv.url)
        got = dict(c.retrieve("plain"))
        check_bf16(dict(c.retrieve("bf16")), bf16_file)
    want = load_file(str(plain_file))
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, name
        np.testing.assert_array_equal(got[name], w, err_msg=name)


def test_get_file_is_byte_identical_and_loads(server_root, plain_file, tmp_path):
    out = tmp_path / "out.safetensors"
    with tw.Server(root=server_root) as srv:
        summary = tw.Client(srv.url).get_file("plain.safetensors", out)
    assert out.read_bytes() == plain_file.read_bytes()
    check_plain(load_file(str(out)), plain_file)
    assert summary["bytes"] == plain_file.stat().st_size
    assert set(summary) == {"bytes", "items", "crc", "seconds"}
    assert not out.with_name("out.safetensors.part").exists()


def test_put_file_stores_under_root(server_root, bf16_file):
    (server_root / "updates").mkdir()
    with tw.Server(root=server_root, allow_push=True) as srv:
        tw.Client(srv.url).put_file(bf16_file, "updates/site-1.safetensors")
    assert (server_root / "updates/site-1.safetensors").read_bytes() == bf16_file.read_bytes()


def test_put_is_refused_without_allow_push(server_root):
    with tw.Server(root=server_root) as srv:
        with pytest.raises(tw.TransferError) as e:
            tw.Client(srv.url).put_file(srv_file(server_root), "copy.safetensors")
    # refused before anything is stored: 400 here, 403 once push rules (SPEC.md §8.9) decide
    assert e.value.status in (400, 403)
    assert not (server_root / "copy.safetensors").exists()


def srv_file(root):
    path = root / "local.safetensors"
    write_safetensors(path, {"a": np.zeros(3)})
    return path


def test_items_selects_in_order():
    tensors = {"a": np.arange(3), "b": np.arange(4.0), "c": np.ones(2, np.int8)}
    with tw.Server(containers={"m": tensors}) as srv:
        got = list(tw.Client(srv.url).retrieve("m", items=["c", "a"]))
    assert [n for n, _ in got] == ["c", "a"]
    np.testing.assert_array_equal(got[1][1], tensors["a"])


def test_arrays_share_the_receive_buffer():
    big = np.arange(3 << 20, dtype=np.float32)  # several chunks: assembled once, handed out as is
    with tw.Server(containers={"m": {"big": big, "small": np.arange(5, dtype=np.int64)}}) as srv:
        for name, arr in tw.Client(srv.url).retrieve("m"):
            owner = base_of(arr)
            assert type(owner).__name__ == "Buffer", name
            assert arr.ctypes.data == owner.__array_interface__["data"][0]
            assert arr.ctypes.data % 8 == 0
            assert arr.flags.writeable == owner.writable
    assert owner is not None


def test_bf16_without_ml_dtypes_is_uint16(monkeypatch):
    bits = bf16_bits()
    monkeypatch.setattr(tw, "_ml_dtypes", None)
    with tw.Server(containers={"m": {"x": bits}}) as srv:
        raw = tw.Client(srv.url)._native.retrieve("m", None, None)
        _, arr = tw._to_array(("x", "BF16", [len(bits)], next(raw)[3]))
    assert arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, bits)


def test_torch_from_numpy_works_on_results():
    torch = pytest.importorskip("torch")
    with tw.Server(containers={"m": every_dtype()}) as srv:
        for name, arr in tw.Client(srv.url).retrieve("m"):
            if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
                continue  # torch has no unsigned wide types in from_numpy on older versions
            t = torch.from_numpy(arr)
            assert tuple(t.shape) == arr.shape


def test_transfers_run_concurrently_from_threads():
    tensors = {f"t{i}": np.full((1 << 16,), i, np.float32) for i in range(8)}
    results, errors = {}, []
    with tw.Server(containers={"m": tensors}) as srv:
        client = tw.Client(srv.url)

        def pull(k):
            try:
                results[k] = {n: float(a[0]) for n, a in client.retrieve("m")}
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=pull, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors
    assert all(r == {f"t{i}": float(i) for i in range(8)} for r in results.values()) and len(results) == 4


def test_served_arrays_are_read_in_place_not_copied():
    a = np.zeros(1000, np.float32)
    with tw.Server(containers={"m": {"a": a}}) as srv:
        a[:] = 7  # after registration: a copy would still hold zeros
        (_, got), = tw.Client(srv.url).retrieve("m")
    np.testing.assert_array_equal(got, np.full(1000, 7, np.float32))


def test_close_lets_a_running_retrieval_finish():
    tensors = {f"t{i}": np.full(1 << 20, i, np.float32) for i in range(8)}
    with tw.Server(containers={"m": tensors}) as srv:
        c = tw.Client(srv.url)
        it = c.retrieve("m")
        first = next(it)
        c.close()
        rest = list(it)
    assert [first[0]] + [n for n, _ in rest] == list(tensors)
