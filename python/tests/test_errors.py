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
    with tw.Server(containers={"m": {"w": np.zeros(1 << 19, np.float32), "b": np.ones(3)}}) as srv:
        bad = proxy(srv.address, flip_at=200_000)
        it = tw.Client(bad.url).retrieve("m", items=["w", "b"])
        with pytest.raises(tw.IntegrityError) as e:
            next(it)
        assert e.value.item == 0 and e.value.offset == 0
        assert "checksum" in str(e.value)
        assert list(it) == []  # the transfer is over
        assert wait_until(lambda: srv.active_requests == 0)


def test_corrupted_get_file_leaves_destination_untouched(proxy, server_root, tmp_path):
    write_safetensors(server_root / "m.safetensors", {"w": np.zeros(1 << 19, np.float32)})
    dest = tmp_path / "m.safetensors"
    dest.write_bytes(b"previous version")
    with tw.Server(root=server_root) as srv:
        bad = proxy(srv.address, flip_at=300_000)
        with pytest.raises(tw.IntegrityError):
            tw.Client(bad.url).get_file("m.safetensors", dest)
    assert dest.read_bytes() == b"previous version"
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
