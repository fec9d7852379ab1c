"""A summary of a sample set (JSON-able dict) and its plain-text table for the terminal."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..samples import SampleSet
from .free_energy import free_energy_difference
from .importance import expectation, log_partition_function
from .result import format_value_error
from .weights import ess, relative_ess


def summarize(
    samples: SampleSet,
    observables: dict[str, Callable[[np.ndarray], Any]] | None = None,
    states: tuple[Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every standard estimate of a sample set, as a JSON-able dict.

    Parameters
    ----------
    samples : SampleSet
        The samples.
    observables : dict of str to callable, optional
        Named observables ``f(x) -> (M,)``; each gets ``<f>``.
    states : tuple of two callables, optional
        ``(in_a, in_b)`` state membership functions; gives ``Delta F_{B-A}``.
    seed : int
        Bootstrap seed.

    Returns
    -------
    dict
        ``n``, ``n_failed``, ``correlated``, ``ess`` (Kish), ``relative_ess``, ``mean_energy``,
        ``observables`` (name to estimate), and ``delta_f`` (if ``states``) and ``log_z`` (if the
        proposal is normalised); every estimate as :meth:`Estimate.to_dict`.
    """
    summary: dict[str, Any] = {
        "n": len(samples),
        "n_failed": samples.n_failed,
        "correlated": samples.correlated,
        "ess": ess(samples),
        "relative_ess": relative_ess(samples),
        "mean_energy": expectation(samples, samples.energies, seed=seed).to_dict(),
        "observables": {
            name: expectation(samples, f, seed=seed).to_dict() for name, f in (observables or {}).items()
        },
    }
    if states is not None:
        summary["delta_f"] = free_energy_difference(samples, *states, seed=seed).to_dict()
    if samples.metadata.get("normalized_proposal", False):
        summary["log_z"] = log_partition_function(samples, seed=seed).to_dict()
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table ``quantity | value | error | notes`` of a :func:`summarize` result.

    Unreliable estimates are marked ``!!`` and their notes say why.
    """
    failed_note = f"{summary['n_failed']} failed"
    ess_note = f"relative {summary['relative_ess']:.3g}"
    if summary["correlated"]:
        failed_note += ", correlated"
        ess_note += "; weights only, ignores autocorrelation"
    rows = [
        ("samples", str(summary["n"]), "", failed_note),
        ("ESS (Kish)", f"{summary['ess']:.1f}", "", ess_note),
    ]
    estimates = [("<u> (kT)", summary["mean_energy"])]
    estimates += [(f"<{name}>", est) for name, est in summary["observables"].items()]
    if "delta_f" in summary:
        estimates.append(("Delta F B-A (kT)", summary["delta_f"]))
    if "log_z" in summary:
        estimates.append(("log Z", summary["log_z"]))
    for name, est in estimates:
        value, error = format_value_error(est["value"], est["error"])
        if est["reliable"]:
            ess_note = "" if est["ess"] is None else f"ESS {est['ess']:.0f}; "
            rows.append((name, value, error, ess_note + est["method"]))
        else:
            rows.append((f"!! {name}", value, error, f"UNRELIABLE: {est['message']}"))
    header = ("quantity", "value", "error", "notes")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        f"{q:<{widths[0]}}  {v:>{widths[1]}}  {e:>{widths[2]}}  {note}".rstrip()
        for q, v, e, note in [header, *rows]
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
