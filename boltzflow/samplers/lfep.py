"""Learned free-energy perturbation: base-state samples mapped to a target temperature, with exact weights.

Each sample is ``T(x)`` for a sample ``x`` of the base state (MD at ``T_A``), with the log-weight

    log w = u_A(x) − u_B(T(x)) + log|det J_T(x)|,

(:mod:`boltzflow.flows.lfep`). Its mean is ``Z_B / Z_A``: the estimation layer's ``log Z`` of
these samples is ``log(Z_B / Z_A) = −Δf(A → B)`` — the metadata says so
(``log_z_relative_to``) and marks the proposal as normalised. Weighted averages of observables are
target-state averages. The base samples should be decorrelated (the weights are treated as
independent) and must not be the ones the map was trained on, or the estimate is biased low.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..flows.lfep import TemperatureMap, evaluate_lfep, load_lfep
from ..samples import SampleSet
from ..systems.system import System
from .metadata import run_metadata


def _read_base_file(path: Path) -> SampleSet | np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"base samples not found: {path}")
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as raw:
            if "sites" in raw.files:
                frames = raw["sites"]
                return frames[raw["decorrelated"]] if "decorrelated" in raw.files else frames
    return SampleSet.load(path)


def load_base_configurations(data: SampleSet | np.ndarray | str | Path, dim: int) -> np.ndarray:
    """Base-state configurations ``(n, dim)`` from a SampleSet, an array, a sample file, or an MD frame file.

    An MD frame file is an ``.npz`` with ``sites`` (float32 frames, as written by
    ``data/make_ice_reference.py``); when it lists ``decorrelated`` frame indices only those are used.

    Raises
    ------
    FileNotFoundError, SampleSetError, ValueError
        Missing or unreadable file; wrong shape or non-finite coordinates.
    """
    if isinstance(data, (str, Path)):
        data = _read_base_file(Path(data))
    x = data.x if isinstance(data, SampleSet) else np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"base samples must have shape (n, {dim}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("base samples contain NaN or inf coordinates")
    return np.asarray(x, dtype=np.float64)


def sample_lfep(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | TemperatureMap | None = None,
    data: SampleSet | np.ndarray | str | Path | None = None,
    batch_size: int = 256,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> SampleSet:
    """Map ``n`` base samples to the target temperature of an LFEP model, with their log-weights.

    Parameters
    ----------
    system : System
        The crystal (any temperature: the model's base and target temperatures are used).
    n : int
        Number of base samples to map (a seeded random subset of ``data`` when it has more).
    seed : int
        Seed of the subset.
    model : path or TemperatureMap
        A map from :func:`~boltzflow.flows.lfep.save_lfep` (``boltzflow train SYSTEM --lfep``).
    data : SampleSet, array or path
        Decorrelated samples of the base state, not used in training (see
        :func:`load_base_configurations` for the accepted files).
    batch_size : int
        Configurations per energy batch.
    progress, checkpoint
        Not used: mapping is one pass over the base samples (about 2 ms per sample for 16 waters),
        nothing to show or resume; accepted for the command line's common sampler interface.

    Returns
    -------
    SampleSet
        At the target temperature; ``energies`` are target reduced energies.
    """
    del progress, checkpoint
    if model is None or data is None:
        raise ValueError("the lfep sampler needs model= (an LFEP map file) and data= (base-state samples)")
    if system.rigid_bodies is None or system.rigid_bodies.box is None:
        raise ValueError(f"system '{system.name}' is not a periodic crystal of rigid molecules: LFEP maps need one")
    flow = model if isinstance(model, TemperatureMap) else load_lfep(model, system.rigid_bodies)
    model_name = "in-memory map" if isinstance(model, TemperatureMap) else str(Path(model).resolve())
    base_t, target_t = flow.config["base_temperature"], flow.config["target_temperature"]
    x = load_base_configurations(data, system.dim)
    if n > len(x):
        raise ValueError(f"asked for {n} samples but the base data has only {len(x)}")
    if n < len(x):
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))]
    base, target = system.at_temperature(base_t), system.at_temperature(target_t)
    with torch.no_grad():
        rigid = flow.chart.forward(flow.chart.inverse(torch.as_tensor(x))[0])[0].numpy()
    u_base = base.energy.evaluate(rigid, need_gradient=False).energy
    if not np.isfinite(u_base).all():
        raise ValueError(f"{int((~np.isfinite(u_base)).sum())} base samples have non-finite base energies")
    mapped, u_target, log_w = evaluate_lfep(flow, rigid, u_base, target.energy, batch_size)
    return SampleSet(
        x=mapped, energies=u_target, log_weights=log_w,
        metadata=run_metadata(
            target, "lfep", seed, correlated=False, normalized_proposal=True, model=model_name,
            base_temperature=base_t, target_temperature=target_t, log_z_relative_to=f"base state at {base_t:g} K",
        ),
    )


__all__ = ["load_base_configurations", "sample_lfep"]
