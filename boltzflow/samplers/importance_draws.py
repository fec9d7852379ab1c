"""The batched, checkpointed loop shared by every independent importance sampler.

Flow, SNF and continuous-flow samplers all draw batches ``x`` with a proposal log-density, attach
true reduced energies and form ``log w = −u − log q``. :func:`draw_in_batches` runs that loop once:
batches in order (each batch its own random stream, chosen by the caller's ``draw``), a progress
bar, atomic checkpoints, and an exact resume after a kill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..systems.system import System
from .checkpoint import Checkpoint

Draw = Callable[[int, int], tuple[np.ndarray, np.ndarray, "np.ndarray | None"]]


@dataclass
class Draws:
    """Proposals, their log-densities, reduced energies, optional per-batch records, resume metadata."""

    x: np.ndarray
    log_proposal: np.ndarray
    energies: np.ndarray
    batch_records: np.ndarray
    resume: dict[str, Any]

    def log_weights(self, valid: np.ndarray) -> np.ndarray:
        """``−u − log q`` where ``valid`` and the energy are finite, ``−inf`` elsewhere."""
        with np.errstate(invalid="ignore"):
            log_w = np.where(valid & np.isfinite(self.energies), -self.energies - self.log_proposal, -np.inf)
        log_w[np.isnan(log_w)] = -np.inf
        return log_w


def draw_in_batches(
    system: System,
    n: int,
    seed: int,
    sampler: str,
    model_name: str,
    draw: Draw,
    batch_size: int,
    progress: bool,
    checkpoint: str | Path | None,
    checkpoint_seconds: float,
    run: dict[str, Any] | None = None,
    record: Callable[[], list[float]] | None = None,
) -> Draws:
    """Draw ``n`` proposals in batches of ``batch_size``, with energies, checkpoints and resume.

    Parameters
    ----------
    system : System
        Target; its energy is evaluated on every batch whose ``draw`` returns no energies.
    n, seed : int
        Number of samples and the run's seed (part of the checkpoint's run identity).
    sampler, model_name : str
        Names for the progress bar and the checkpoint's run identity.
    draw : callable
        ``draw(batch_index, size) -> (x (size, D), log_proposal (size,), energies (size,) or None)``.
    batch_size : int
        Samples per batch.
    progress : bool
        Show a progress bar.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.
    run : dict, optional
        Further settings that identify the run (a checkpoint of other settings is refused).
    record : callable, optional
        Called after each batch; its list of floats is stored per batch (``Draws.batch_records``)
        and checkpointed, e.g. acceptance rates of stochastic blocks.

    Returns
    -------
    Draws
    """
    if n < 1 or batch_size < 1:
        raise ValueError("n and batch_size must be >= 1")
    ckpt = Checkpoint(checkpoint, run={"system": system.name, "sampler": sampler, "n": n, "seed": seed,
                                       "batch_size": batch_size, "model": model_name, **(run or {})},
                      every_seconds=checkpoint_seconds)
    x = np.empty((n, system.dim))
    log_p = np.empty(n)
    energies = np.empty(n)
    records: list[list[float]] = []
    done = 0
    resumed = ckpt.load()
    if resumed is not None:
        arrays, info = resumed
        done = info["done"]
        x[:done], log_p[:done], energies[:done] = arrays["x"], arrays["log_proposal"], arrays["energies"]
        records = arrays["records"].tolist()
    bar = tqdm(total=n, initial=done, desc=f"{sampler} {system.name}", disable=not progress, unit="sample")
    while done < n:
        size = min(batch_size, n - done)
        rows = slice(done, done + size)
        x[rows], log_p[rows], u = draw(done // batch_size, size)
        energies[rows] = system.energy.evaluate(x[rows], need_gradient=False).energy if u is None else u
        if record is not None:
            records.append(list(record()))
        done += size
        bar.update(size)
        if ckpt.due() or (done == n and ckpt.path is not None):
            ckpt.save({"x": x[:done], "log_proposal": log_p[:done], "energies": energies[:done],
                       "records": _table(records)}, {"done": done})
    bar.close()
    return Draws(x, log_p, energies, _table(records), ckpt.resume_metadata())


def _table(records: list[list[float]]) -> np.ndarray:
    """Per-batch records as a ``(batches, width)`` array (width 0 when nothing is recorded)."""
    return np.array(records, dtype=float).reshape(len(records), len(records[0]) if records else 0)


__all__ = ["Draws", "draw_in_batches"]
