"""Fixtures of the tensorwire Python tests: models in every dtype, a TCP
proxy that damages or slows a transfer, and the `tensorwire` binary."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest

import tensorwire as tw

REPO = Path(__file__).resolve().parents[2]

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None


def every_dtype() -> Dict[str, np.ndarray]:
    """One tensor per dtype numpy can hold (safetensors.numpy's set), with
    odd shapes, a scalar and empty tensors."""
    rng = np.random.default_rng(7)
    t = {
        "f64": rng.standard_normal((3, 5)),
        "f32": rng.standard_normal((7, 9)).astype(np.float32),
        "f16": rng.standard_normal((33,)).astype(np.float16),
        "i64": rng.integers(-(2**62), 2**62, (4, 2), dtype=np.int64),
        "u64": rng.integers(0, 2**63, (5,), dtype=np.uint64),
        "i32": rng.integers(-(2**31), 2**31 - 1, (2, 3, 4), dtype=np.int32),
        "u32": rng.integers(0, 2**32 - 1, (6,), dtype=np.uint32),
        "i16": rng.integers(-(2**15), 2**15 - 1, (11,), dtype=np.int16),
        "u16": rng.integers(0, 2**16 - 1, (3, 3), dtype=np.uint16),
        "i8": rng.integers(-128, 127, (17,), dtype=np.int8),
        "u8": rng.integers(0, 255, (1, 13), dtype=np.uint8),
        "bool": rng.integers(0, 2, (10,)).astype(bool),
        "c64": (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64),
        "scalar_f32": np.array(3.25, dtype=np.float32),
        "scalar_i64": np.array(-7, dtype=np.int64),
        "empty_f32": np.zeros((0,), dtype=np.float32),
        "empty_2d_i16": np.zeros((3, 0), dtype=np.int16),
    }
    return t


def bf16_bits(n: int = 40) -> np.ndarray:
    """bfloat16 values as their uint16 bits (finite, both signs)."""
    x = np.linspace(-3, 3, n, dtype=np.float32)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: Dict[str, np.ndarray], bf16: Optional[Dict[str, np.ndarray]] = None) -> None:
    """Writes a safetensors file: with the reference writer
    (``safetensors.numpy.save_file``) unless ``bf16`` tensors (uint16 bits)
    are given, which it cannot write; then by the format's rules (8-byte
    header length, JSON header, data back to back)."""
    if not bf16:
        from safetensors.numpy import save_file

        save_file(tensors, str(path))
        return
    from safetensors.numpy import _TYPES

    names = {np.dtype(v): k for k, v in _TYPES.items()}
    header, blobs, at = {}, [], 0
    items = [(k, names[a.dtype], a) for k, a in tensors.items()] + [(k, "BF16", b.astype("<u2")) for k, b in bf16.items()]
    for name, dtype, a in items:
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [at, at + len(data)]}
        blobs.append(data)
        at += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def raw_tensors(path: Path) -> Dict[str, tuple]:
    """``name -> (dtype, shape, bytes)`` straight from a safetensors file's
    header, for dtypes safetensors.numpy cannot load (BF16)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {k: (v["dtype"], v["shape"], data[base + v["data_offsets"][0] : base + v["data_offsets"][1]]) for k, v in header.items()}


def wait_until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class Proxy:
    """A TCP proxy in front of ``target``: counts the bytes going from the
    server to the client, optionally flips the byte at ``flip_at`` of that
    direction (a corrupted body), drops the connection after ``cut_at`` bytes
    of it, or forwards at most ``rate`` bytes/s."""

    def __init__(
        self, target: str, flip_at: Optional[int] = None, rate: Optional[float] = None, cut_at: Optional[int] = None
    ) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.flip_at, self.rate, self.cut_at = flip_at, rate, cut_at
        self.forwarded = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "%s:%d" % self.listener.getsockname()
        self.url = f"http://{self.address}"
        self.sockets = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if downstream:
                    start = self.forwarded
                    if self.flip_at is not None and start <= self.flip_at < start + len(data):
                        b = bytearray(data)
                        b[self.flip_at - start] ^= 0xFF
                        data = bytes(b)
                    if self.cut_at is not None and start + len(data) > self.cut_at:
                        dst.sendall(data[: max(0, self.cut_at - start)])
                        break
                    self.forwarded += len(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the listener and every connection (a server waiting on a
        stalled stream sees the connection go and stops)."""
        self.closed = True
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def proxy():
    made = []

    def make(target: str, **kw) -> Proxy:
        p = Proxy(target, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def tensorwire_bin() -> Optional[str]:
    """The CLI built by cargo ($TENSORWIRE_BIN, else target/release or
    target/debug), or None."""
    candidates = [os.environ.get("TENSORWIRE_BIN"), REPO / "target/release/tensorwire", REPO / "target/debug/tensorwire"]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("tensorwire")


@pytest.fixture
def cli() -> str:
    found = tensorwire_bin()
    if found is None:
        print("SKIPPED: no tensorwire binary (cargo build --release --bin tensorwire, or set TENSORWIRE_BIN)")
        pytest.skip("no tensorwire binary (cargo build --release --bin tensorwire, or set TENSORWIRE_BIN)")
    return found


@pytest.fixture
def server_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return root


def base_of(arr: np.ndarray):
    """The object at the end of an array's base chain."""
    b = arr
    while isinstance(b, np.ndarray) and b.base is not None:
        b = b.base
    return b


__all__ = ["tw"]
