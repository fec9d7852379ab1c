"""Checkpoints for long sampling runs: atomic, validated, resumable after a kill or a Ctrl-C."""

from __future__ import annotations

import json
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..integrity import UnverifiedFileWarning, array_digest, differences, error_summary, json_digest
from ..io import InterruptGuard, atomic_write


class CheckpointError(ValueError):
    """Raised for a corrupted checkpoint or one written by a different run."""


class _Saved(dict):
    """A checkpoint's arrays or info: a key the file lacks is a :class:`CheckpointError` naming it."""

    def __init__(self, items: dict[str, Any], path: Path, kind: str) -> None:
        super().__init__(items)
        self.path, self.kind = path, kind

    def __missing__(self, key: str) -> Any:
        raise CheckpointError(
            f"checkpoint {self.path} lacks the {self.kind} '{key}' (hand-edited, or written by another version); "
            "delete it to start afresh"
        )


class Checkpoint:
    """Periodic snapshots of a sampler's state in one ``.npz`` file.

    Parameters
    ----------
    path : path or None
        Checkpoint file; ``None`` disables checkpointing.
    every_seconds : float
        Minimum wall-clock time between two snapshots taken by :meth:`due`.
    run : dict
        What identifies the run (system, sampler, n, seed, options). A checkpoint is only resumed
        by the same run; anything else raises :class:`CheckpointError` instead of silently mixing.

    Notes
    -----
    A Ctrl-C is not lost work: from the first :meth:`due` on, an :class:`~boltzflow.io.InterruptGuard`
    turns the first Ctrl-C into a request; :meth:`due` then returns True, and :meth:`save` writes the
    snapshot and raises ``KeyboardInterrupt``. A second Ctrl-C stops at once. Sampler loops need
    nothing beyond their usual ``if ckpt.due(): ckpt.save(...)``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> ckpt = Checkpoint(Path(tempfile.mkdtemp()) / "checkpoint.npz", run={"seed": 0}, every_seconds=0.0)
    >>> ckpt.load() is None
    True
    >>> ckpt.due()
    True
    >>> ckpt.save({"x": np.zeros(3)}, {"step": 5})
    >>> arrays, info = ckpt.load()
    >>> info, arrays["x"].shape
    ({'step': 5}, (3,))
    >>> ckpt.remove()
    """

    def __init__(self, path: str | Path | None, run: dict[str, Any], every_seconds: float = 60.0) -> None:
        self.path = None if path is None else Path(path)
        self.run = json.loads(json.dumps(run))
        self.every_seconds = every_seconds
        self._last = time.monotonic()
        self._guard = InterruptGuard()
        self.resumed_from: dict[str, Any] | None = None

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The saved ``(arrays, info)`` or ``None`` when there is no checkpoint to resume.

        The header's SHA-256 and each array's are verified; a key the sampler asks for that the
        file lacks raises :class:`CheckpointError` naming it. After a resume,
        :meth:`resume_metadata` says from where.

        Raises
        ------
        CheckpointError
            If the file is truncated, corrupted (checksum mismatch), lacks an array or its header,
            or belongs to a different run.

        Warns
        -----
        boltzflow.integrity.UnverifiedFileWarning
            For a checkpoint written before checksums were stored.
        """
        if self.path is None or not self.path.exists():
            return None
        remedy = "delete it to start afresh"
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, TypeError, zlib.error) as err:
            # TypeError: a plain .npy, not an npz (no context manager)
            raise CheckpointError(
                f"checkpoint {self.path} is corrupted or truncated ({error_summary(err)}); {remedy}") from None
        if "checkpoint_json" not in arrays:
            raise CheckpointError(f"checkpoint {self.path} lacks its header 'checkpoint_json'; {remedy}")
        try:
            header = json.loads(str(arrays.pop("checkpoint_json")))
        except ValueError as err:
            raise CheckpointError(
                f"checkpoint {self.path} is corrupted: unreadable header ({error_summary(err)}); {remedy}") from None
        missing = [key for key in ("run", "info") if not isinstance(header, dict) or key not in header]
        if missing:
            raise CheckpointError(f"checkpoint {self.path} lacks '{missing[0]}' in its header; {remedy}")
        if "sha256" in header:
            self._verify(header, arrays)
        else:
            warnings.warn(
                f"checkpoint {self.path} has no checksum (written by an older boltzflow), so corruption in it "
                "cannot be detected", UnverifiedFileWarning, stacklevel=2,
            )
        if header["run"] != self.run:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to a different run ({differences(header['run'], self.run)}); "
                "use another output folder (--out) or delete the checkpoint"
            )
        info = header["info"]
        self.resumed_from = {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str))}
        return _Saved(arrays, self.path, "array"), _Saved(info, self.path, "entry")

    def _verify(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Compare the header's and every array's SHA-256 with the stored ones."""
        content = {key: value for key, value in header.items() if key != "sha256"}
        digests = header.get("arrays")
        if json_digest(content) != header["sha256"] or not isinstance(digests, dict):
            raise CheckpointError(
                f"checkpoint {self.path} is corrupted (checksum mismatch in its header); delete it to start afresh"
            )
        lacking = sorted(set(digests) - set(arrays))
        if lacking:
            raise CheckpointError(
                f"checkpoint {self.path} lacks the array '{lacking[0]}' (hand-edited or damaged); "
                "delete it to start afresh"
            )
        damaged = sorted(name for name in arrays if digests.get(name) != array_digest(arrays[name]))
        if damaged:
            raise CheckpointError(
                f"checkpoint {self.path} is corrupted (checksum mismatch in '{damaged[0]}'); delete it to start afresh"
            )

    def resume_metadata(self) -> dict[str, Any]:
        """SampleSet metadata on resumption: ``resumed`` and, if so, the saved progress it resumed from.

        Examples
        --------
        >>> Checkpoint(None, run={}).resume_metadata()
        {'resumed': False}
        """
        if self.resumed_from is None:
            return {"resumed": False}
        return {"resumed": True, "resumed_from": dict(self.resumed_from)}

    def due(self) -> bool:
        """True when the last snapshot is older than ``every_seconds``, or a Ctrl-C asked to stop."""
        if self.path is None:
            return False
        self._guard.arm(stacklevel=2)
        return self._guard.requested or time.monotonic() - self._last >= self.every_seconds

    def save(self, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Write a snapshot atomically (``info`` must be JSON-serialisable).

        Raises
        ------
        KeyboardInterrupt
            After writing, if a Ctrl-C asked the run to stop.
        """
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        content = {"run": self.run, "info": info, "arrays": {name: array_digest(a) for name, a in arrays.items()}}
        header = np.array(json.dumps({**content, "sha256": json_digest(content)}))
        atomic_write(self.path, lambda f: np.savez(f, checkpoint_json=header, **arrays))
        self._last = time.monotonic()
        self._guard.honour()

    def remove(self) -> None:
        """Delete the checkpoint once the run has finished and its results are saved."""
        self._guard.disarm()
        if self.path is not None and self.path.exists():
            self.path.unlink()


def restore_stored(arrays: dict[str, np.ndarray], stored: np.ndarray, stored_u: np.ndarray) -> None:
    """Copy the samples a chain checkpoint kept (``stored``, ``stored_u``) into the run's buffers."""
    n_stored = arrays["stored"].shape[0]
    stored[:n_stored], stored_u[:n_stored] = arrays["stored"], arrays["stored_u"]
