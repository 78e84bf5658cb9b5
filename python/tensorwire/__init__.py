"""tensorwire: stream models and tensors between federated-learning parties
over HTTP/2 — framed, checksummed, without copies.

>>> import tensorwire as tw
>>> with tw.Server("127.0.0.1:0", containers={"global": state_dict}) as srv:
...     c = tw.Client(f"http://{srv.address}")
...     for name, arr in c.retrieve("global"):
...         ...

Arrays handed out share the receive buffer (no copy): numpy views the
received bytes, and ``torch.from_numpy`` views them again (for bf16 arrays,
``torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)``: torch does not
know ml_dtypes' type). bf16 tensors come back as ``ml_dtypes.bfloat16`` arrays when
ml_dtypes is installed and as ``uint16`` arrays (the raw bits) otherwise; fp8
tensors likewise as ml_dtypes types or ``uint8``. Arrays passed in are read
in place while the transfer runs: do not modify them until the call returns.

Every call that waits releases the GIL, and Ctrl-C (KeyboardInterrupt)
cancels the transfer on both sides. Errors are :class:`tensorwire.Error` and
its subclasses (:mod:`tensorwire.errors`).
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _tensorwire
from .errors import ConnectionError, Error, IntegrityError, NotFound, ProtocolError, TransferError

try:  # bf16 and fp8 as real dtypes when available
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    _ml_dtypes = None

__version__ = _tensorwire.__version__

__all__ = [
    "Client",
    "ConnectionError",
    "Error",
    "IntegrityError",
    "NotFound",
    "ProtocolError",
    "Quantized",
    "SCHEMES",
    "Server",
    "TensorIterator",
    "TransferError",
    "dequantize",
    "quantize",
]

#: The quantization schemes ``quantize=`` takes (the CLI's names).
SCHEMES = ("fp16", "bf16", "blockwise8", "fp4", "nf4", "fp4-nested", "nf4-nested")

# ---------------------------------------------------------------------------
# dtypes: the one place where safetensors spellings meet numpy dtypes.

_PLAIN = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "C64": np.dtype("<c8"),
}
# dtype -> (ml_dtypes attribute, fallback with the same bits)
_EXTENDED = {
    "BF16": ("bfloat16", np.dtype("<u2")),
    "F8_E4M3": ("float8_e4m3fn", np.dtype(np.uint8)),
    "F8_E5M2": ("float8_e5m2", np.dtype(np.uint8)),
    "F8_E8M0": ("float8_e8m0fnu", np.dtype(np.uint8)),
}
#: Sub-byte dtypes come back as their packed bytes (flat uint8).
_PACKED = ("F4", "F6_E2M3", "F6_E3M2")


def _numpy_dtype(dtype: str) -> Optional[np.dtype]:
    if dtype in _PLAIN:
        return _PLAIN[dtype]
    if dtype in _EXTENDED:
        attr, fallback = _EXTENDED[dtype]
        found = getattr(_ml_dtypes, attr, None) if _ml_dtypes is not None else None
        return np.dtype(found) if found is not None else fallback
    return None


_BY_NUMPY = {v: k for k, v in _PLAIN.items()}


def _wire_dtype(dt: np.dtype) -> str:
    """The safetensors spelling of a numpy dtype (native or little-endian)."""
    if dt.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"):
        return {v[0]: k for k, v in _EXTENDED.items()}[dt.name]
    found = _BY_NUMPY.get(dt.newbyteorder("<") if dt.byteorder == "=" else dt)
    if found is None:
        raise TypeError(f"dtype {dt} cannot be sent (tensorwire sends safetensors dtypes)")
    return found


def _to_array(raw: Tuple[str, str, List[int], Any]) -> Tuple[str, np.ndarray]:
    """A received ``(name, dtype, shape, Buffer)`` as ``(name, ndarray)``:
    a view of the buffer, no copy."""
    name, dtype, shape, buf = raw
    flat = np.asarray(buf)
    dt = _numpy_dtype(dtype)
    if dt is None:  # packed sub-byte values: the bytes as they are
        return name, flat
    return name, flat.view(dt).reshape(shape)


def _flat_bytes(arr: Any) -> Tuple[str, List[int], np.ndarray]:
    """``(dtype, shape, flat uint8 view)`` of an array, without a copy when
    it is C-contiguous little-endian (a copy otherwise)."""
    a = np.asarray(arr)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    dtype, shape = _wire_dtype(a.dtype), list(a.shape)
    # (ascontiguousarray would turn a 0-d array into a 1-d one: shape first)
    a = np.ascontiguousarray(a)
    return dtype, shape, a.reshape(-1).view(np.uint8)


def _tensor_tuples(tensors: Mapping[str, Any]) -> Iterator[Tuple[str, str, List[int], np.ndarray]]:
    """Lazily, one tensor at a time: what the native layer sends."""
    for name, arr in tensors.items():
        dtype, shape, flat = _flat_bytes(arr)
        yield str(name), dtype, shape, flat


def _address(url: str) -> str:
    parsed = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
    if parsed.scheme == "https":
        raise ConnectionError(f"{url}: https:// is not supported yet (cleartext HTTP/2 only)")
    if parsed.scheme != "http" or not parsed.hostname:
        raise ValueError(f"{url}: expected http://HOST:PORT")
    host = parsed.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parsed.port or 7470}"


# ---------------------------------------------------------------------------
# Receiving


class TensorIterator:
    """The tensors of a container as they arrive: ``(name, ndarray)`` pairs,
    each yielded once its chunks and checksums are verified.

    Lazy: the next tensor is received only when asked for, so memory is the
    tensor being assembled plus the arrays you keep. Stopping early (``break``,
    :meth:`close`, or dropping the iterator) cancels the transfer.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __iter__(self) -> "TensorIterator":
        return self

    def __next__(self) -> Tuple[str, np.ndarray]:
        if self._raw is None:
            raise StopIteration
        return _to_array(next(self._raw))

    def close(self) -> None:
        """Cancels the transfer if it is still running."""
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def __enter__(self) -> "TensorIterator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """A connection to a tensorwire server (``http://HOST:PORT``).

    Every transfer is its own HTTP/2 stream on the one connection. Methods
    release the GIL while they wait; Ctrl-C cancels the transfer.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._native = _tensorwire.Client(_address(url))

    def retrieve(
        self,
        name: str,
        items: Optional[Sequence[str]] = None,
        quantize: Optional[str] = None,
    ) -> TensorIterator:
        """Pulls container ``name`` — an in-memory container of the server,
        or a safetensors file under its root — tensor by tensor.

        ``items`` selects tensors by name, in that order. ``quantize`` (one of
        :data:`SCHEMES`) has the server quantize float tensors; they are
        restored to their original dtype here. Raises :class:`NotFound` when
        the object or an item does not exist.
        """
        raw = self._native.retrieve(name, list(items) if items is not None else None, quantize)
        return TensorIterator(raw)

    def get_file(self, name: str, dest: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
        """Pulls the file ``name`` into ``dest``: written to ``dest.part``,
        verified, then renamed; on any failure ``dest`` is left as it was.
        Returns ``{"bytes", "items", "crc", "seconds"}``."""
        return self._native.get_file(name, str(dest))

    def put_file(self, path: Union[str, "os.PathLike[str]"], name: str) -> Dict[str, Any]:
        """Pushes the file at ``path`` as object ``name``, stored under the
        server's root (a server with ``on_push`` hands every push to it, and
        refuses files). Returns ``{"bytes", "items", "crc", "seconds"}``."""
        return self._native.put_file(str(path), name)

    def put_tensors(
        self,
        name: str,
        tensors: Mapping[str, Any],
        quantize: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Pushes ``tensors`` (name -> array) as container ``name``: to the
        server's ``on_push`` handler when it has one, else stored under its
        root as a safetensors file. Tensors are taken from the mapping one at
        a time as the server's flow control allows, and read in place (do not
        modify them during the call). ``quantize`` as in :meth:`retrieve`."""
        return self._native.put_tensors(name, _tensor_tuples(tensors), quantize)

    def close(self) -> None:
        """Closes the connection: no new transfers; a retrieval still being
        iterated finishes first."""
        self._native.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Serving


PushHandler = Callable[[str, Iterator[Tuple[str, np.ndarray]]], None]


class Server:
    """Serves files under ``root`` and named in-memory ``containers``
    (``{name: {tensor name: array}}``), and takes pushes.

    ``on_push(name, tensors)`` is called on a worker thread for each pushed
    container, with the tensors as an iterator of ``(name, ndarray)`` that
    yields each one as soon as it is verified; the push is answered once the
    handler returns and the whole object has been verified (what the handler
    leaves unread is drained). When ``on_push`` is set every push goes to it.
    ``allow_push`` lets pushes without a handler be stored under ``root``.

    A context manager: leaving the ``with`` block calls :meth:`close`.
    """

    def __init__(
        self,
        addr: str = "127.0.0.1:0",
        *,
        root: Optional[Union[str, "os.PathLike[str]"]] = None,
        containers: Optional[Mapping[str, Mapping[str, Any]]] = None,
        on_push: Optional[PushHandler] = None,
        allow_push: bool = False,
    ) -> None:
        native_containers = None
        if containers is not None:
            native_containers = [(name, list(_tensor_tuples(t))) for name, t in containers.items()]
        handler = None
        if on_push is not None:
            user = on_push

            def handler(name: str, raw: Any) -> None:
                user(name, TensorIterator(raw))

        self._native = _tensorwire.Server(
            addr,
            root=None if root is None else str(root),
            containers=native_containers,
            on_push=handler,
            allow_push=allow_push,
        )

    @property
    def address(self) -> str:
        """``HOST:PORT`` actually bound (the port chosen for ``:0``)."""
        return self._native.address

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, for :class:`Client`."""
        return f"http://{self.address}"

    @property
    def active_requests(self) -> int:
        """Requests being handled now (a cancelled one stops counting once
        the server has seen the reset)."""
        return self._native.active_requests

    @property
    def bytes_sent(self) -> int:
        """Response-body bytes sent so far, all transfers together."""
        return self._native.bytes_sent

    def set_container(self, name: str, tensors: Mapping[str, Any]) -> None:
        """Replaces container ``name`` (given at construction) with
        ``tensors``: the next round's global model. Transfers already
        running finish with the version they started with."""
        self._native.set_container(name, list(_tensor_tuples(tensors)))

    def close(self) -> None:
        """Stops accepting connections and returns once the transfers in
        flight have finished (graceful)."""
        self._native.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Quantization


class Quantized:
    """A tensor quantized as bitsandbytes lays it out.

    * ``codes``: ``uint8``; one code per element (``blockwise8``) or two
      packed per byte, element ``2k`` in the high nibble (``fp4``, ``nf4``),
      over the whole flattened tensor. For ``fp16``/``bf16`` the cast values,
      shaped like the tensor.
    * ``absmax``: ``float32``, one per block of ``block_size`` elements; for
      the nested schemes ``uint8`` codes of the absmax, restored with
      ``absmax2`` and ``offset`` (``float32``, one per group of 256 blocks).
    * ``scheme``, ``block_size``, ``dtype`` (the original, safetensors
      spelling) and ``shape``.
    """

    def __init__(
        self,
        scheme: str,
        dtype: str,
        shape: Tuple[int, ...],
        block_size: int,
        codes: np.ndarray,
        absmax: Optional[np.ndarray] = None,
        absmax2: Optional[np.ndarray] = None,
        offset: Optional[np.ndarray] = None,
    ) -> None:
        self.scheme = scheme
        self.dtype = dtype
        self.shape = tuple(shape)
        self.block_size = block_size
        self.codes = codes
        self.absmax = absmax
        self.absmax2 = absmax2
        self.offset = offset

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized form (codes and scales)."""
        parts = (self.codes, self.absmax, self.absmax2, self.offset)
        return sum(p.nbytes for p in parts if p is not None)

    def __repr__(self) -> str:
        return f"Quantized(scheme={self.scheme!r}, dtype={self.dtype!r}, shape={self.shape}, nbytes={self.nbytes})"


_GROUP = 256  # absmax blocks per nested group (SPEC.md §5.5.3)


def _block_sizes(numel: int, block: int) -> np.ndarray:
    n = -(-numel // block)
    sizes = np.full(n, block, dtype=np.int64)
    if n and numel % block:
        sizes[-1] = numel % block
    return sizes


def quantize(arr: Any, scheme: str) -> Quantized:
    """Quantizes a float array (``float32``, ``float16``, ``bfloat16``,
    ``float64``) with one of :data:`SCHEMES`, bit for bit as tensorwire
    sends it (and as bitsandbytes' kernels compute it). Raises
    :class:`ValueError` for a scheme that does not apply to the dtype."""
    dtype, shape, flat = _flat_bytes(arr)
    buf, block = _tensorwire.encode(flat, dtype, shape, scheme)
    wire = np.asarray(buf)
    numel = int(np.prod(shape, dtype=np.int64))
    if block == 0:  # fp16 / bf16 casts
        cast = np.dtype("<f2") if scheme == "fp16" else _numpy_dtype("BF16")
        return Quantized(scheme, dtype, tuple(shape), 0, wire.view(cast).reshape(shape))
    sizes = _block_sizes(numel, block)
    code_lens = sizes if scheme == "blockwise8" else (sizes + 1) // 2
    if scheme.endswith("-nested"):
        groups = [(g, min(g + _GROUP, len(sizes))) for g in range(0, len(sizes), _GROUP)]
        offset = np.empty(len(groups), np.float32)
        absmax2 = np.empty(len(groups), np.float32)
        qabs, codes, at = [], [], 0
        for i, (lo, hi) in enumerate(groups):
            offset[i], absmax2[i] = wire[at : at + 8].view("<f4")
            at += 8
            qabs.append(wire[at : at + hi - lo])
            at += hi - lo
            n = int(code_lens[lo:hi].sum())
            codes.append(wire[at : at + n])
            at += n
        return Quantized(scheme, dtype, tuple(shape), block, _cat(codes), _cat(qabs), absmax2, offset)
    absmax = np.empty(len(sizes), np.float32)
    codes = np.empty(int(code_lens.sum()), np.uint8)
    full = int((sizes == block).sum())
    rec = 4 + int(code_lens[0]) if len(sizes) else 0
    if full:
        records = wire[: full * rec].reshape(full, rec)
        absmax[:full] = records[:, :4].copy().view("<f4").reshape(-1)
        codes[: full * (rec - 4)] = records[:, 4:].reshape(-1)
    if full < len(sizes):  # the partial last block
        tail = wire[full * rec :]
        absmax[full:] = tail[:4].view("<f4")
        codes[full * (rec - 4) :] = tail[4:]
    return Quantized(scheme, dtype, tuple(shape), block, codes, absmax)


def _cat(parts: List[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, np.uint8)


def _records(q: Quantized) -> np.ndarray:
    """The wire records of ``q`` (SPEC.md §5.5), for decoding."""
    numel = int(np.prod(q.shape, dtype=np.int64))
    if q.block_size == 0:
        return np.ascontiguousarray(q.codes).reshape(-1).view(np.uint8)
    sizes = _block_sizes(numel, q.block_size)
    code_lens = sizes if q.scheme == "blockwise8" else (sizes + 1) // 2
    codes = np.ascontiguousarray(q.codes, dtype=np.uint8).reshape(-1)
    if q.scheme.endswith("-nested"):
        parts, at = [], 0
        for g, lo in enumerate(range(0, len(sizes), _GROUP)):
            hi = min(lo + _GROUP, len(sizes))
            n = int(code_lens[lo:hi].sum())
            head = np.array([q.offset[g], q.absmax2[g]], dtype="<f4").view(np.uint8)
            parts += [head, np.asarray(q.absmax[lo:hi], dtype=np.uint8), codes[at : at + n]]
            at += n
        return _cat(parts)
    absmax = np.ascontiguousarray(q.absmax, dtype="<f4")
    full = int((sizes == q.block_size).sum())
    cl = int(code_lens[0]) if len(sizes) else 0
    out = np.empty(int(code_lens.sum()) + 4 * len(sizes), np.uint8)
    if full:
        records = out[: full * (cl + 4)].reshape(full, cl + 4)
        records[:, :4] = absmax[:full].view(np.uint8).reshape(full, 4)
        records[:, 4:] = codes[: full * cl].reshape(full, cl)
    if full < len(sizes):
        tail = out[full * (cl + 4) :]
        tail[:4] = absmax[full:].view(np.uint8)
        tail[4:] = codes[full * cl :]
    return out


def dequantize(q: Quantized) -> np.ndarray:
    """Restores a :class:`Quantized` tensor to an array of its original
    dtype and shape."""
    buf = _tensorwire.decode(_records(q), q.dtype, list(q.shape), q.scheme)
    return _to_array(("", q.dtype, list(q.shape), buf))[1]

