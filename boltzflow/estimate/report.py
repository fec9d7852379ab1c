"""A summary of a sample set (JSON-able dict) and its plain-text table for the terminal."""

from __future__ import annotations

import math
import unicodedata
from typing import Any, Callable

import numpy as np

from ..samples import SampleSet
from ._observables import observable_values
from .diagnostics import integrated_autocorrelation_time, r_hat
from .free_energy import free_energy_difference
from .importance import expectation, log_partition_function
from .pareto import flag_threshold, pareto_k
from .result import Estimate, format_value_error, mark_unreliable
from .weights import ess, relative_ess


def summarize(
    samples: SampleSet,
    observables: dict[str, Callable[[np.ndarray], Any]] | None = None,
    states: tuple[Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]] | None = None,
    seed: int = 0,
    *,
    error: str = "analytic",
    n_bootstrap: int = 200,
) -> dict[str, Any]:
    """Every standard estimate of a sample set, as a JSON-able dict.

    Parameters
    ----------
    samples : SampleSet
        The samples.
    observables : dict of str to callable, optional
        Named observables ``f(x) -> (M,)``; each gets ``<f>``.
    states : tuple of two callables, optional
        ``(in_a, in_b)`` state membership functions; gives ``Delta F_{B-A}``, and the number of
        samples with nonzero weight in each state. When a state has none, **every** estimate is
        flagged unreliable (not only ``Delta F``): the run never reached it, so no estimate
        includes its contribution, and no error bar can show what is missing (chains that all
        stayed in one well agree with each other). The rule is "no sample", not "fewer than
        ``k`` effective samples": a state that was visited, however briefly, is in the data, and
        a chain's excursions there raise the error bars through the multi-chain autocorrelation
        (see :mod:`~boltzflow.estimate.uncertainty`), while ``Delta F`` itself is flagged below
        ``min_ess`` effective samples per state; estimates such as ``<u>`` stay valid when a
        visited state is merely rare. A state too rare to expect one sample is flagged as
        unvisited too: the run cannot tell rare from unreachable.
    seed : int
        Bootstrap seed.
    error : {"analytic", "bootstrap"}
        Error method of independent samples (see :func:`~boltzflow.estimate.expectation`).
    n_bootstrap : int
        Bootstrap resamples (``error="bootstrap"``).

    Returns
    -------
    dict
        ``n``, ``n_failed``, ``correlated``, ``ess`` (Kish), ``relative_ess``, ``pareto_k`` and
        ``pareto_k_threshold`` (weighted samples only: the k̂ above which the raw-weight estimates are
        flagged, :func:`~boltzflow.estimate.pareto.flag_threshold`), ``mean_energy``,
        ``observables`` (name to estimate), and ``delta_f`` and ``state_samples`` (if ``states``:
        ``{"A": count, "B": count}`` of samples with nonzero weight) and ``log_z`` (if the
        proposal is normalised), ``chain_diagnostics`` (correlated chains: integrated
        autocorrelation time and split R-hat of u and each observable, acceptance rates from the
        metadata); every estimate as :meth:`Estimate.to_dict`.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(0.0, 2.0, size=(4000, 1))
    >>> samples = SampleSet(x, 0.5 * x[:, 0] ** 2, log_weights=-0.5 * x[:, 0] ** 2 + x[:, 0] ** 2 / 8)
    >>> summary = summarize(samples, {"x": lambda v: v[:, 0]})
    >>> round(summary["pareto_k"], 2) < 0.5, summary["pareto_k_threshold"]
    (True, 0.5)
    >>> stuck = SampleSet(x[x[:, 0] < 0], 0.5 * x[x[:, 0] < 0, 0] ** 2)  # a run that never reached x > 1
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):  # flagged estimates warn (LowESSWarning)
    ...     summary = summarize(stuck, {"x": lambda v: v[:, 0]}, states=(lambda v: v[:, 0] < -1, lambda v: v[:, 0] > 1))
    >>> summary["state_samples"], summary["observables"]["x"]["reliable"]
    ({'A': 1288, 'B': 0}, False)
    >>> summary["mean_energy"]["message"]
    'state B has no sample: the run never visited it, so no estimate of this run includes its contribution'
    """
    options = {"error": error, "n_bootstrap": n_bootstrap, "seed": seed}
    summary: dict[str, Any] = {
        "n": len(samples),
        "n_failed": samples.n_failed,
        "correlated": samples.correlated,
        "ess": ess(samples),
        "relative_ess": relative_ess(samples),
    }
    if samples.is_weighted:
        summary["pareto_k"] = pareto_k(samples)
        summary["pareto_k_threshold"] = flag_threshold(len(samples))
    estimates: dict[str, Estimate] = {"mean_energy": expectation(samples, samples.energies, **options)}
    observed = {name: expectation(samples, f, **options) for name, f in (observables or {}).items()}
    counts = {} if states is None else _state_samples(samples, states)
    if states is not None:
        estimates["delta_f"] = free_energy_difference(samples, *states, **options)
    if samples.metadata.get("normalized_proposal", False):
        estimates["log_z"] = log_partition_function(samples, **options)
    unvisited = [name for name, count in counts.items() if count == 0]
    if unvisited:
        problem = (f"state {unvisited[0]} has no sample: the run never visited it, so no estimate of this run "
                   "includes its contribution" if len(unvisited) == 1 else "states A and B have no sample: the run "
                   "visited neither, so no estimate of this run includes their contribution")
        estimates = {key: _flag(est, problem) for key, est in estimates.items()}
        observed = {name: _flag(est, problem) for name, est in observed.items()}
    summary["mean_energy"] = estimates.pop("mean_energy").to_dict()
    summary["observables"] = {name: est.to_dict() for name, est in observed.items()}
    summary.update({key: est.to_dict() for key, est in estimates.items()})
    if counts:
        summary["state_samples"] = counts
    if samples.correlated and samples.chain is not None:
        summary["chain_diagnostics"] = _chain_diagnostics(samples, observables or {})
    return summary


def _state_samples(samples: SampleSet, states: tuple[Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]]
                   ) -> dict[str, int]:
    """Number of samples with nonzero weight in state A and in state B."""
    keep = np.isfinite(samples.log_weights)
    if not keep.any():
        return {"A": 0, "B": 0}
    return {name: int(np.count_nonzero(observable_values(f, samples, keep, f"state {name} function")))
            for name, f in zip("AB", states)}


def _flag(estimate: Estimate, problem: str) -> Estimate:
    """``estimate`` flagged unreliable for ``problem``, keeping an earlier reason after it."""
    return mark_unreliable(estimate, problem if estimate.reliable else f"{problem}; {estimate.message}")


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


def _shown_width(text: str) -> int:
    """Characters ``text`` takes on a terminal (combining marks, as in "k̂", take none)."""
    return sum(not unicodedata.combining(c) for c in text)


def _pareto_row(k: float, threshold: float, correlated: bool) -> tuple[str, str, str, str]:
    """The table row of the weights' Pareto k̂, with its verdict."""
    if not math.isfinite(k):
        return ("Pareto k̂", "n/a", "", "too few nonzero tail weights to fit")
    if correlated:
        note = f"reported, not a flag for correlated weighted samples (threshold {threshold:.2f})"
        return ("Pareto k̂", f"{k:.2f}", "", note)
    if k > threshold:
        return ("!! Pareto k̂", f"{k:.2f}", "",
                f"> {threshold:.2f}: heavy-tailed weights, every weighted estimate is unreliable")
    return ("Pareto k̂", f"{k:.2f}", "", f"good (unreliable above {threshold:.2f})")


def format_table(summary: dict[str, Any]) -> str:
    """A plain-text table ``quantity | value | error | notes`` of a :func:`summarize` result.

    Unreliable estimates are marked ``!!`` and their notes say why (e.g. a declared state the run
    never visited, which flags every estimate; see :func:`summarize`); so is a Pareto k̂ of
    independent weights above its threshold.
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
    if "pareto_k" in summary:
        rows.append(_pareto_row(summary["pareto_k"], summary["pareto_k_threshold"], summary["correlated"]))
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
    widths = [max(_shown_width(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        f"{q}{' ' * (widths[0] - _shown_width(q))}  {v:>{widths[1]}}  {e:>{widths[2]}}  {note}".rstrip()
        for q, v, e, note in [header, *rows]
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
