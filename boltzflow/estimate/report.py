"""A summary of a sample set (JSON-able dict) and its plain-text table for the terminal."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ..samples import SampleSet
from .free_energy import free_energy_difference
from .diagnostics import integrated_autocorrelation_time, r_hat
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
        proposal is normalised), ``chain_diagnostics`` (correlated chains: integrated
        autocorrelation time and split R-hat of u and each observable, acceptance rates from the
        metadata); every estimate as :meth:`Estimate.to_dict`.
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
    if samples.correlated and samples.chain is not None:
        summary["chain_diagnostics"] = _chain_diagnostics(samples, observables or {})
    return summary


def _chain_diagnostics(samples: SampleSet, observables: dict[str, Callable[[np.ndarray], Any]]) -> dict[str, Any]:
    """Integrated autocorrelation time (in stored samples) and split R-hat of u and each observable."""
    table: dict[str, Any] = {"n_chains": int(len(np.unique(samples.chain)))}
    for name, f in {"u": samples.energies, **observables}.items():
        table[name] = {"tau": float(integrated_autocorrelation_time(samples, f)), "r_hat": float(r_hat(samples, f))}
    for key in ("global_acceptance_rate", "local_acceptance_rate", "acceptance_rate"):
        if key in samples.metadata:
            table[key] = samples.metadata[key]
    return table


_REFERENCE_METHODS = {"exact": "exact (quadrature)", "umbrella": "umbrella MD", "md": "MD/MCMC baseline"}


def reference_comparison(summary: dict[str, Any], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """This run's ΔF and ⟨u⟩ next to the project's reference values, with the gap in standard errors.

    Parameters
    ----------
    summary : dict
        A :func:`summarize` result.
    reference : dict
        A system's entry of ``data/reference.json``: method name to a summary (``"md"``,
        ``"umbrella"``) or to exact numbers (``"exact"``, with ``"delta_f_b_minus_a"``).

    Returns
    -------
    list of dict
        One row per quantity both have: ``quantity``, ``value``, ``error``, ``reference``,
        ``reference_error``, ``reference_method``, ``z`` (difference over the combined error).
        For ΔF the best reference available is used (exact, then umbrella MD, then plain MD
        when it is marked reliable).
    """
    rows = []

    def add(quantity: str, est: dict[str, Any], ref_value: float, ref_error: float, method: str) -> None:
        combined = (est["error"] ** 2 + ref_error**2) ** 0.5
        z = (est["value"] - ref_value) / combined if combined > 0 else float("nan")
        rows.append({"quantity": quantity, "value": est["value"], "error": est["error"], "reference": ref_value,
                     "reference_error": ref_error, "reference_method": method, "z": z})

    if "delta_f" in summary:
        if "delta_f_b_minus_a" in reference.get("exact", {}):
            add("Delta F B-A (kT)", summary["delta_f"], reference["exact"]["delta_f_b_minus_a"], 0.0,
                _REFERENCE_METHODS["exact"])
        else:
            for method in ("umbrella", "md"):
                ref = reference.get(method, {}).get("delta_f")
                if ref is not None and ref.get("reliable"):
                    add("Delta F B-A (kT)", summary["delta_f"], ref["value"], ref["error"], _REFERENCE_METHODS[method])
                    break
    ref_u = reference.get("md", {}).get("mean_energy")
    if "mean_energy" in reference.get("exact", {}):
        add("<u> (kT)", summary["mean_energy"], reference["exact"]["mean_energy"], 0.0, _REFERENCE_METHODS["exact"])
    elif ref_u is not None and ref_u.get("reliable"):
        add("<u> (kT)", summary["mean_energy"], ref_u["value"], ref_u["error"], _REFERENCE_METHODS["md"])
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """Plain-text lines for :func:`reference_comparison` rows."""
    lines = []
    for row in rows:
        value, error = format_value_error(row["value"], row["error"])
        if row["reference_error"] > 0:
            ref, ref_error = format_value_error(row["reference"], row["reference_error"])
            ref_text = f"{ref} ± {ref_error}"
        else:
            ref_text = f"{row['reference']:.4g}"
        gap = f"difference {row['z']:+.1f} σ" if math.isfinite(row["z"]) else "no estimate from this run"
        method = row["reference_method"]
        lines.append(f"{row['quantity']}: this run {value} ± {error}; reference {ref_text} ({method}); {gap}")
    return "\n".join(lines)


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
    diagnostics = summary.get("chain_diagnostics")
    if diagnostics:
        worst = max((v["r_hat"] for v in diagnostics.values() if isinstance(v, dict) and np.isfinite(v["r_hat"])),
                    default=float("nan"))
        rates = [f"{k.replace('_acceptance_rate', '')} {diagnostics[k]:.2f}" for k in ("global_acceptance_rate",
                 "local_acceptance_rate") if isinstance(diagnostics.get(k), (int, float))]
        note = f"{diagnostics['n_chains']} chains; " + "; ".join(
            f"{name}: tau {v['tau']:.1f}, R-hat {v['r_hat']:.3f}" for name, v in diagnostics.items()
            if isinstance(v, dict))
        flag = "!! " if np.isfinite(worst) and worst > 1.1 else ""
        rows.append((f"{flag}chains", f"{worst:.3f}" if np.isfinite(worst) else "n/a", "",
                     ("max R-hat > 1.1: chains disagree; " if flag else "max R-hat; ") + note
                     + ("; acceptance " + ", ".join(rates) if rates else "")))
    header = ("quantity", "value", "error", "notes")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        f"{q:<{widths[0]}}  {v:>{widths[1]}}  {e:>{widths[2]}}  {note}".rstrip()
        for q, v, e, note in [header, *rows]
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
