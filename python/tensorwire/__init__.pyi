"""Type stubs of tensorwire's public API (see __init__.py for the docs)."""

import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt

from .errors import ConnectionError as ConnectionError
from .errors import Error as Error
from .errors import IntegrityError as IntegrityError
from .errors import NotFound as NotFound
from .errors import ProtocolError as ProtocolError
from .errors import TransferError as TransferError

__version__: str
SCHEMES: Tuple[str, ...]

_Path = Union[str, "os.PathLike[str]"]
#: Anything numpy.asarray turns into an array of a safetensors dtype.
ArrayLike = npt.ArrayLike

class Summary(TypedDict):
    """What a file transfer or push moved."""

    bytes: int
    items: int
    crc: int
    seconds: float

class TensorIterator(Iterator[Tuple[str, np.ndarray]]):
    """Tensors of a container, each yielded once verified; abandoning it cancels the transfer."""

    def __iter__(self) -> "TensorIterator": ...
    def __next__(self) -> Tuple[str, np.ndarray]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "TensorIterator": ...
    def __exit__(self, *exc: object) -> None: ...

class Client:
    """A connection to a tensorwire server."""

    url: str
    def __init__(self, url: str) -> None: ...
    def retrieve(
        self, name: str, items: Optional[Sequence[str]] = None, quantize: Optional[str] = None
    ) -> TensorIterator: ...
    def get_file(self, name: str, dest: _Path) -> Summary: ...
    def put_file(self, path: _Path, name: str) -> Summary: ...
    def put_tensors(self, name: str, tensors: Mapping[str, ArrayLike], quantize: Optional[str] = None) -> Summary: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Client": ...
    def __exit__(self, *exc: object) -> None: ...

PushHandler = Callable[[str, Iterator[Tuple[str, np.ndarray]]], None]

class Server:
    """Serves files under a root and in-memory containers; takes pushes."""

    def __init__(
        self,
        addr: str = "127.0.0.1:0",
        *,
        root: Optional[_Path] = None,
        containers: Optional[Mapping[str, Mapping[str, ArrayLike]]] = None,
        on_push: Optional[PushHandler] = None,
        allow_push: bool = False,
    ) -> None: ...
    @property
    def address(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def active_requests(self) -> int: ...
    @property
    def bytes_sent(self) -> int: ...
    def set_container(self, name: str, tensors: Mapping[str, ArrayLike]) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Server": ...
    def __exit__(self, *exc: object) -> None: ...

class Quantized:
    """A tensor quantized in bitsandbytes' layout."""

    scheme: str
    dtype: str
    shape: Tuple[int, ...]
    block_size: int
    codes: np.ndarray
    absmax: Optional[np.ndarray]
    absmax2: Optional[np.ndarray]
    offset: Optional[np.ndarray]
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
    ) -> None: ...
    @property
    def nbytes(self) -> int: ...

def quantize(arr: ArrayLike, scheme: str) -> Quantized: ...
def dequantize(q: Quantized) -> np.ndarray: ...

# internal helpers used by the tests
def _to_array(raw: Tuple[str, str, List[int], Any]) -> Tuple[str, np.ndarray]: ...
_ml_dtypes: Any
