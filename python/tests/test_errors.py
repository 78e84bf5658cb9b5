"""The exception hierarchy, and damaged data."""

from __future__ import annotations

import builtins
import socket

import numpy as np
import pytest

import tensorwire as tw
from conftest import wait_until, write_safetensors


def test_hierarchy():
    for cls in (tw.IntegrityError, tw.ProtocolError, tw.TransferError, tw.ConnectionError, tw.NotFound):
        assert issubclass(cls, tw.Error)
    assert issubclass(tw.ConnectionError, tw.TransferError)
    assert issubclass(tw.ConnectionError, builtins.ConnectionError)
    assert issubclass(tw.NotFound, LookupError)


def test_corrupted_body_raises_integrity_error_with_place(proxy):
    # One 2 MiB tensor travels as one chunk; byte 200,000 of what the server
    # sends lies inside that chunk's payload.
    model = {"w": np.zeros(1 << 19, np.float32), "b": np.ones(3)}
    with tw.Server(containers={"m": model}) as srv, proxy(srv.address, flip_at=200_000) as bad:
        it = tw.Client(bad.url).retrieve("m", items=["w", "b"])
        with pytest.raises(tw.IntegrityError) as e:
            next(it)
        assert e.value.item == 0 and e.value.offset == 0
        assert "checksum" in str(e.value)
        assert list(it) == []  # the transfer is over
        assert wait_until(lambda: srv.active_requests == 0)


def test_corrupted_get_file_is_healed_by_a_retry(proxy, server_root, tmp_path):
    # A file pull asks again for what failed its CRC (SPEC.md §8.4), so one
    # damaged byte on the way ends in the right file, never a wrong one.
    write_safetensors(server_root / "m.safetensors", {"w": np.arange(1 << 19, dtype=np.float32)})
    dest = tmp_path / "m.safetensors"
    dest.write_bytes(b"previous version")
    with tw.Server(root=server_root) as srv, proxy(srv.address, flip_at=300_000) as bad:
        tw.Client(bad.url).get_file("m.safetensors", dest)
    assert dest.read_bytes() == (server_root / "m.safetensors").read_bytes()
    assert not (tmp_path / "m.safetensors.part").exists()


def test_not_found():
    with tw.Server(containers={"m": {"a": np.zeros(2)}}) as srv:
        c = tw.Client(srv.url)
        with pytest.raises(tw.NotFound):
            c.retrieve("nothing")
        with pytest.raises(tw.NotFound):
            c.retrieve("m", items=["a", "missing"])
        with pytest.raises(tw.NotFound):
            c.get_file("nothing", "/tmp/never-written")


def test_connection_refused_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    with pytest.raises(tw.ConnectionError):
        tw.Client(f"http://127.0.0.1:{port}")


def test_urls():
    with pytest.raises(tw.ConnectionError):
        tw.Client("https://127.0.0.1:1")
    with pytest.raises(ValueError):
        tw.Client("ftp://127.0.0.1:1")


def test_closed_client():
    with tw.Server(containers={"m": {"a": np.zeros(2)}}) as srv:
        c = tw.Client(srv.url)
        c.close()
        with pytest.raises(RuntimeError):
            c.retrieve("m")


def test_native_layer_reads_only_real_arrays():
    class Fake:
        __array_interface__ = {"version": 3, "shape": (16,), "typestr": "|u1", "data": (8, True)}

    with pytest.raises(TypeError):
        tw._tensorwire.encode(Fake(), "F32", [4], "nf4")
    with pytest.raises(TypeError):  # strided
        tw._tensorwire.encode(np.zeros(32, np.uint8)[::2], "F32", [4], "nf4")


def test_connection_lost_mid_transfer_is_a_connection_error(proxy):
    model = {f"t{i}": np.zeros(1 << 20, np.float32) for i in range(4)}
    with tw.Server(containers={"m": model}) as srv, proxy(srv.address, cut_at=6 << 20) as cut:
        it = tw.Client(cut.url).retrieve("m")
        got = []
        with pytest.raises(tw.ConnectionError):
            for name, _ in it:
                got.append(name)
        assert got == ["t0"]  # what arrived whole was verified and handed out; nothing after


def test_quantized_push_of_16_bit_sources():
    if tw._ml_dtypes is None:
        pytest.skip("needs ml_dtypes for bf16 arrays")
    x16 = np.linspace(-1, 1, 300, dtype=np.float16)
    xbf = np.linspace(-1, 1, 300, dtype=np.float32).astype(tw._ml_dtypes.bfloat16)
    got = {}
    with tw.Server(on_push=lambda name, items: got.update((n, a.copy()) for n, a in items)) as srv:
        tw.Client(srv.url).put_tensors("u", {"h": x16, "b": xbf}, quantize="blockwise8")
    for name, x in (("h", x16), ("b", xbf)):
        assert got[name].dtype == x.dtype
        np.testing.assert_array_equal(got[name], tw.dequantize(tw.quantize(x, "blockwise8")))


def test_ipv6_loopback():
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        print("SKIPPED: no IPv6 loopback here")
        pytest.skip("no IPv6 loopback")
    with tw.Server("[::1]:0", containers={"m": {"a": np.arange(3)}}) as srv:
        assert srv.address.startswith("[::1]:")
        (_, a), = tw.Client(srv.url).retrieve("m")
    np.testing.assert_array_equal(a, np.arange(3))
