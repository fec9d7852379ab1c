"""Checkpoints for long sampling runs: atomic, validated, resumable after a kill."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write


class CheckpointError(ValueError):
    """Raised for a corrupted checkpoint or one written by a different run."""


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
    """

    def __init__(self, path: str | Path | None, run: dict[str, Any], every_seconds: float = 60.0) -> None:
        self.path = None if path is None else Path(path)
        self.run = json.loads(json.dumps(run))
        self.every_seconds = every_seconds
        self._last = time.monotonic()

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The saved ``(arrays, info)`` or ``None`` when there is no checkpoint to resume."""
        if self.path is None or not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            header = json.loads(str(arrays.pop("checkpoint_json")))
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as err:
            raise CheckpointError(
                f"checkpoint {self.path} is corrupted or truncated ({err}); delete it to start afresh"
            ) from None
        if header.get("run") != self.run:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to a different run {header.get('run')}, not {self.run}; "
                "use another output folder or delete the checkpoint"
            )
        return arrays, header["info"]

    def due(self) -> bool:
        """True when the last snapshot is older than ``every_seconds``."""
        return self.path is not None and time.monotonic() - self._last >= self.every_seconds

    def save(self, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Write a snapshot atomically (``info`` must be JSON-serialisable)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = np.array(json.dumps({"run": self.run, "info": info}))
        atomic_write(self.path, lambda f: np.savez(f, checkpoint_json=header, **arrays))
        self._last = time.monotonic()

    def remove(self) -> None:
        """Delete the checkpoint once the run has finished and its results are saved."""
        if self.path is not None and self.path.exists():
            self.path.unlink()


def restore_stored(arrays: dict[str, np.ndarray], stored: np.ndarray, stored_u: np.ndarray) -> None:
    """Copy the samples a chain checkpoint kept (``stored``, ``stored_u``) into the run's buffers."""
    n_stored = arrays["stored"].shape[0]
    stored[:n_stored], stored_u[:n_stored] = arrays["stored"], arrays["stored_u"]
