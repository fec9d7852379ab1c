"""SHA-256 checksums of saved files: a corrupted model file or checkpoint is noticed on load.

Two containers, one mechanism:

* **torch files** (model files, training checkpoints): the state is serialised with
  ``torch.save`` to bytes, and the file holds ``{"envelope": ENVELOPE, "sha256": hex, "payload":
  uint8 tensor of those bytes}``. :func:`read_torch` loads the envelope with ``torch.load(weights_only=True)``, checks
  the digest, then loads the payload with ``weights_only=True`` again: a file never executes code
  when loaded, however it was made. A file of the previous layout (the state itself, no envelope)
  still loads, with an :class:`UnverifiedFileWarning`.
* **npz files** (sampling checkpoints): :func:`array_digest` of every array and
  :func:`json_digest` of the JSON header are stored in the header and compared on load.

torch is imported only by the torch-file functions, so the digests (and the npz checkpoints that use
them) need numpy alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write

ENVELOPE = "boltzflow-sha256"


class UnverifiedFileWarning(UserWarning):
    """A file written before checksums were stored: corruption in it cannot be detected."""


def payload_digest(data: bytes) -> str:
    """SHA-256 of ``data`` as a hex string.

    Examples
    --------
    >>> payload_digest(b"boltzflow")[:16]
    '275c01ba10915ba0'
    """
    return hashlib.sha256(data).hexdigest()


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and contents (C order) as a hex string.

    Examples
    --------
    >>> import numpy as np
    >>> array_digest(np.arange(3)) == array_digest(np.arange(3))
    True
    >>> array_digest(np.arange(3)) == array_digest(np.arange(3).reshape(3, 1))
    False
    """
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def json_digest(value: Any) -> str:
    """SHA-256 of the canonical JSON text of ``value`` (keys sorted) as a hex string.

    Examples
    --------
    >>> json_digest({"a": 1, "b": [2.5]}) == json_digest({"b": [2.5], "a": 1})
    True
    """
    return payload_digest(json.dumps(value, sort_keys=True).encode())


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def differences(saved: Any, current: Any, limit: int = 3) -> str:
    """What differs between two JSON-like descriptions of a run, as ``"key saved vs current"`` items.

    Tuples and lists compare equal (as they do after a trip through JSON); long values are
    shortened; an empty string means the two agree.

    Parameters
    ----------
    saved, current : dict
        The description stored in a file and the one of the running command.
    limit : int
        At most this many differences are listed (the rest are counted).

    Returns
    -------
    str

    Examples
    --------
    >>> differences({"n_layers": 6, "hidden": (64, 64), "seed": 0}, {"n_layers": 4, "hidden": [64, 64], "seed": 0})
    'n_layers 6 vs 4'
    >>> differences({"a": 1}, {"a": 1})
    ''
    """
    def plain(value: Any) -> dict[str, Any]:
        return _flatten(json.loads(json.dumps(value, default=str)))

    old, new = plain(saved), plain(current)
    keys = [key for key in sorted(set(old) | set(new)) if old.get(key, "absent") != new.get(key, "absent")]
    def short(value: Any) -> str:
        text = str(value)
        return text if len(text) <= 40 else text[:37] + "..."

    listed = [f"{key or 'value'} {short(old.get(key, 'absent'))} vs {short(new.get(key, 'absent'))}"
              for key in keys[:limit]]
    if len(keys) > limit:
        listed.append(f"{len(keys) - limit} more")
    return ", ".join(listed)


def write_torch(path: str | Path, state: Any) -> Path:
    """Write ``state`` atomically as a checksummed torch file (read it with :func:`read_torch`).

    Parameters
    ----------
    path : path
        Output file; its folder must exist.
    state : object
        Anything ``torch.load(weights_only=True)`` can read back (tensors, dicts, lists, numbers,
        strings, ``None``).

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, torch
    >>> path = write_torch(Path(tempfile.mkdtemp()) / "state.pt", {"w": torch.ones(2)})
    >>> read_torch(path, "state file", "delete it")["w"]
    tensor([1., 1.])
    """
    import torch

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    envelope = {"envelope": ENVELOPE, "sha256": payload_digest(payload),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    atomic_write(path, lambda f: torch.save(envelope, f))
    return path


def error_summary(err: BaseException) -> str:
    """An exception as ``"Type: first sentence"`` on one short line (library advice left out).

    Examples
    --------
    >>> error_summary(ValueError("Bad CRC-32 for file 'x.npy'. If you trust the file, load it unsafely."))
    "ValueError: Bad CRC-32 for file 'x.npy'"
    """
    text = (str(err).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {text[:160]}"


def _torch_load(data: Any, map_location: str) -> Any:
    """``torch.load(weights_only=True)``; anything it raises on a damaged or hostile file becomes ValueError."""
    import torch

    try:
        return torch.load(data, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        raise ValueError("refused by the safe loader: not only tensors and plain data") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError, TypeError, AttributeError,
            IndexError, struct.error, UnicodeDecodeError, MemoryError) as err:
        raise ValueError(error_summary(err)) from None


def read_torch(
    path: str | Path, what: str, remedy: str, map_location: str = "cpu",
    error: type[ValueError] = ValueError,
) -> Any:
    """Read a file written by :func:`write_torch`, verifying its checksum; never executes code.

    Parameters
    ----------
    path : path
        The file.
    what : str
        What the file is, for messages ("model file", "training checkpoint").
    remedy : str
        What the user should do about a damaged file ("re-train or re-download it").
    map_location : str
        Device the tensors are loaded onto.
    error : type
        Exception class raised (a ``ValueError`` subclass).

    Returns
    -------
    object
        The saved state.

    Raises
    ------
    error
        If the file is missing, truncated, not a torch file, refused by the safe loader (a pickle
        that would run code), or its contents do not match the stored SHA-256.

    Warns
    -----
    UnverifiedFileWarning
        For a file of the previous layout, without a checksum.

    Examples
    --------
    >>> import tempfile, torch
    >>> path = write_torch(Path(tempfile.mkdtemp()) / "state.pt", torch.zeros(1000))
    >>> data = bytearray(path.read_bytes()); data[len(data) // 2] ^= 0xFF; _ = path.write_bytes(bytes(data))
    >>> read_torch(path, "state file", "delete it")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: state file ... is corrupted (checksum mismatch); delete it
    """
    import torch

    path = Path(path)
    try:
        outer = _torch_load(path, map_location)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except ValueError as err:
        raise error(f"{what} {path} is corrupted or not a torch file ({err}); {remedy}") from None
    if not (isinstance(outer, dict) and "envelope" in outer):
        warnings.warn(
            f"{what} {path} has no checksum (written by an older boltzflow), so corruption in it cannot be "
            "detected; save it again to add one", UnverifiedFileWarning, stacklevel=2,
        )
        return outer
    payload = outer.get("payload")
    if (outer["envelope"] != ENVELOPE or not isinstance(outer.get("sha256"), str)
            or not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1):
        raise error(f"{what} {path} is corrupted (damaged checksum envelope); {remedy}")
    payload = payload.cpu().numpy().tobytes()
    if payload_digest(payload) != outer["sha256"]:
        raise error(f"{what} {path} is corrupted (checksum mismatch); {remedy}")
    try:
        return _torch_load(io.BytesIO(payload), map_location)
    except ValueError as err:
        raise error(f"{what} {path} is not a boltzflow file: its checksummed payload is unreadable ({err}); "
                    f"{remedy}") from None


__all__ = [
    "ENVELOPE", "UnverifiedFileWarning", "array_digest", "differences", "error_summary", "json_digest",
    "payload_digest", "read_torch", "write_torch",
]
