"""The exceptions tensorwire raises: one hierarchy under :class:`Error`.

Every exception carries the message and, where known, where the fault was:
``item`` (the index of the tensor in the object), ``offset`` (the byte offset
of the damaged chunk in that item), ``status`` (an HTTP status from the
server) and ``code`` (an abort code of SPEC.md §9).
"""

from __future__ import annotations

import builtins
from typing import Optional

__all__ = ["Error", "IntegrityError", "ProtocolError", "TransferError", "ConnectionError", "NotFound"]


class Error(Exception):
    """Base class of every tensorwire error."""

    def __init__(
        self,
        message: str,
        *,
        item: Optional[int] = None,
        offset: Optional[int] = None,
        status: Optional[int] = None,
        code: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.item = item
        self.offset = offset
        self.status = status
        self.code = code


class IntegrityError(Error):
    """Received data failed a checksum: a damaged chunk (``item`` and
    ``offset`` say which), header, item or object. Nothing damaged is ever
    handed out or written in place of the destination."""


class ProtocolError(Error):
    """The peer sent something SPEC.md does not allow (bad structure,
    inconsistent items, limits exceeded)."""


class TransferError(Error):
    """The transfer failed: the server refused or failed it (``status``),
    the peer aborted it (``code``), or it was cancelled."""


class ConnectionError(TransferError, builtins.ConnectionError):
    """The connection could not be made, or broke, or timed out. Also a
    builtin :class:`ConnectionError`."""


class NotFound(Error, LookupError):
    """The object, or a tensor named in ``items``, does not exist."""
