"""Plots people would rather look at than read: weighted histograms of a SampleSet."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402
from .samples import SampleSet  # noqa: E402
from .systems.observables import Dihedral  # noqa: E402
from .systems.system import System  # noqa: E402


def _weights(samples: SampleSet) -> tuple[np.ndarray, np.ndarray]:
    """Normalised weights of the samples with non-zero weight, and their indices."""
    keep = np.flatnonzero(np.isfinite(samples.log_weights))
    lw = samples.log_weights[keep]
    w = np.exp(lw - lw.max()) if keep.size else lw
    return keep, w / w.sum() if keep.size else w


def plot_samples(samples: SampleSet, system: System | None, path: str | os.PathLike) -> Path:
    """Write a PNG with the reduced-energy histogram and one weighted histogram per observable.

    A Ramachandran plot (free energy in kT) is added when the system declares ``phi`` and ``psi``;
    for importance-weighted samples (flows) both the reweighted map and that of the samples as
    drawn, and the 1D histograms overlay the unweighted one.

    Parameters
    ----------
    samples : SampleSet
        Samples to show (importance weights are applied).
    system : System or None
        Provides the observables; ``None`` shows the energy only.
    path : path
        PNG file to write (atomically).

    Returns
    -------
    Path
    """
    path = Path(path)
    keep, w = _weights(samples)
    x = samples.x[keep]
    observables = dict(system.observables) if system is not None else {}
    panels: list[str] = ["energy", *observables]
    maps: list[tuple[str, np.ndarray]] = []
    if {"phi", "psi"} <= set(observables):
        if samples.is_weighted:  # importance-weighted proposals: show what was drawn and the reweighted result
            maps = [("reweighted free energy [kT]", w), ("as drawn, unweighted [kT]", np.ones_like(w))]
        else:
            maps = [("free energy [kT]", w)]
    n_panels = len(panels) + len(maps)
    cols = min(3, n_panels)
    rows = int(np.ceil(n_panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    axes_flat = list(axes.ravel())
    for ax, name in zip(axes_flat, panels):
        values = samples.energies[keep] if name == "energy" else observables[name](x)
        periodic = isinstance(observables.get(name), Dihedral)
        span = (-np.pi, np.pi) if periodic else None
        if name == "energy" and values.size:  # a few clashing proposals would squash the histogram
            span = (float(values.min()), float(np.percentile(values, 99.5)))
        ax.hist(values, bins=60, weights=w, density=True, color="C0", alpha=0.8, range=span,
                label="reweighted" if samples.is_weighted else None)
        if samples.is_weighted:
            ax.hist(values, bins=60, density=True, histtype="step", color="C1", range=span, label="as drawn")
            ax.legend(fontsize=7)
        ax.set_xlabel("reduced energy u [kT]" if name == "energy" else name)
        ax.set_ylabel("density")
    for ax, (label, weights) in zip(axes_flat[len(panels):], maps):
        hist, xe, ye = np.histogram2d(
            observables["phi"](x), observables["psi"](x), bins=60, range=[[-np.pi, np.pi]] * 2, weights=weights
        )
        with np.errstate(divide="ignore"):
            free = -np.log(hist.T)
        free -= free[np.isfinite(free)].min() if np.isfinite(free).any() else 0.0
        image = ax.pcolormesh(xe, ye, np.ma.masked_invalid(free), cmap="viridis", vmax=10)
        fig.colorbar(image, ax=ax, label=label)
        ax.set_xlabel("φ [rad]")
        ax.set_ylabel("ψ [rad]")
        ax.set_aspect("equal")
    for ax in axes_flat[n_panels:]:
        ax.axis("off")
    name = samples.metadata.get("system", "samples")
    fig.suptitle(f"{name} — {samples.metadata.get('sampler', '?')}, n={len(samples)}, failed={samples.n_failed}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path
