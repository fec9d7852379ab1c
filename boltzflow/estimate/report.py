"""A summary of a sample set (JSON-able dict) and its plain-text table for the terminal."""

from __future__ import annotations

import math
import unicodedata
from typing import Any, Callable

import numpy as np

from ..samples import SampleSet
from ._observables import observable_values
from .checks import SystemLike, check_samples
from .diagnostics import integrated_autocorrelation_time, move_fractions, r_hat
from .free_energy import free_energy_difference
from .importance import expectation, log_partition_function
from .pareto import flag_threshold, pareto_k
from .result import Estimate, format_value_error, mark_unreliable
from .uncertainty import MAX_R_HAT
from .weights import ess, relative_ess

MIN_MOVE_FRACTION = 0.01
"""Fewest stored steps of unweighted correlated chains that must change the configuration (1 %).

Tuned MCMC kernels accept 20–70 % of their proposals (random walk 0.23, MALA 0.57, HMC 0.65) and
independence proposals from a trained flow rarely fall below a few per cent; below 1 % a chain
repeats each configuration for more than 100 stored steps on average, so a run holds few distinct
configurations and the autocorrelation estimate behind the error bars (which needs many
fluctuations per chain) has too little to go on: the step size or proposal is broken. The
fraction is read from the coordinates (:func:`~boltzflow.estimate.diagnostics.move_fractions`),
so it is the same for every sampler; thinning raises it, as it should, since the error bars are
those of the stored samples.
"""

_ACCEPTANCE_KEYS = ("acceptance_rate", "global_acceptance_rate")


def summarize(
    samples: SampleSet,
    observables: dict[str, Callable[[np.ndarray], Any]] | None = None,
    states: tuple[Callable[[np.ndarray], Any], Callable[[np.ndarray], Any]] | None = None,
    seed: int = 0,
    *,
    error: str = "analytic",
    n_bootstrap: int = 200,
    system: SystemLike | None = None,
) -> dict[str, Any]:
    """Every standard estimate of a sample set, as a JSON-able dict.

    Unweighted correlated chains (MD/MCMC) that barely move are caught before their error bars are
    believed: when no chain ever changes its configuration, when fewer than
    :data:`MIN_MOVE_FRACTION` of the stored steps do, or when some chains never move, every
    estimate is flagged unreliable with the reason (the recorded acceptance rate, if any, is
    quoted). An estimate whose value is the same on every sample of correlated chains is flagged
    by the estimators themselves (its error bar would be 0). Chains that have not converged are
    caught too: when the split R̂ of ``u``, of any observable or of a state's indicator exceeds
    :data:`~boltzflow.estimate.uncertainty.MAX_R_HAT` (1.1), every estimate is flagged — chains
    that disagree about one quantity (a rarely crossed barrier) bias the others through it, even
    when those others' own R̂ looks fine (each estimate is also flagged by its own R̂).

    Parameters
    ----------
    samples : SampleSet
        The samples.
    observables : dict of str to callable, optional
        Named observables ``f(x) -> (M,)``; each gets ``<f>``. Default: the ``system``'s.
    states : tuple of two callables, optional
        ``(in_a, in_b)`` state membership functions (default: the ``system``'s states ``A`` and
        ``B`` when it declares both); gives ``Delta F_{B-A}``, and the number of
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
    system : System or DeclaredSystem, optional
        The system the samples are of: checked first (:func:`~boltzflow.estimate.checks.check_samples`:
        the number of coordinates, the name, the declared observables' indices), and the default
        of ``observables`` and ``states``.

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
        metadata, and the mean fraction of stored steps that move); every estimate as
        :meth:`Estimate.to_dict`.

    Raises
    ------
    SampleSetError
        If the samples do not fit ``system``.

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
    >>> frozen = SampleSet(np.ones((100, 1)), np.ones(100), chain=np.repeat([0, 1], 50), metadata={"correlated": True})
    >>> with warnings.catch_warnings(record=True):
    ...     summary = summarize(frozen)
    >>> summary["mean_energy"]["reliable"], summary["mean_energy"]["message"][:41]
    (False, 'no chain ever moves: each of the 2 chains')
    """
    if system is not None:
        check_samples(samples, system)
        observables = dict(system.observables) if observables is None else observables
        if states is None and {"A", "B"} <= set(system.states):
            states = (system.states["A"], system.states["B"])
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
    stuck = _stuck_chains(samples)
    disagree = "" if stuck else _disagreeing_chains(samples, {"u": samples.energies, **(observables or {}),
                                                             **dict(zip(("state A", "state B"), states or ()))})
    if stuck:  # the root cause: every other reason (no fluctuation, an unvisited state) follows from it
        estimates = {key: mark_unreliable(est, stuck) for key, est in estimates.items()}
        observed = {name: mark_unreliable(est, stuck) for name, est in observed.items()}
    elif unvisited:
        problem = (f"state {unvisited[0]} has no sample: the run never visited it, so no estimate of this run "
                   "includes its contribution" if len(unvisited) == 1 else "states A and B have no sample: the run "
                   "visited neither, so no estimate of this run includes their contribution")
        estimates = {key: _flag(est, problem) for key, est in estimates.items()}
        observed = {name: _flag(est, problem) for name, est in observed.items()}
    if disagree:
        estimates = {key: _flag(est, disagree) for key, est in estimates.items()}
        observed = {name: _flag(est, disagree) for name, est in observed.items()}
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


def _stuck_chains(samples: SampleSet) -> str:
    """Why unweighted correlated chains cannot be trusted because they barely move; empty if they move."""
    if not samples.correlated or samples.is_weighted:
        return ""
    fractions = move_fractions(samples[np.isfinite(samples.log_weights)])
    fractions = fractions[np.isfinite(fractions)]
    if fractions.size == 0:
        return ""
    rates = [samples.metadata[k] for k in _ACCEPTANCE_KEYS if isinstance(samples.metadata.get(k), (int, float))]
    recorded = f" (recorded acceptance rate {rates[0]:.2%})" if rates else ""
    stuck = int(np.count_nonzero(fractions == 0.0))
    if stuck == fractions.size:
        return (f"no chain ever moves: each of the {stuck} chains repeats its first configuration{recorded}, so "
                "the samples are starting points, not the distribution, and no error bar can show it")
    if fractions.mean() < MIN_MOVE_FRACTION:
        return (f"the chains barely move: {fractions.mean():.2%} of stored steps change the configuration "
                f"(< {MIN_MOVE_FRACTION:.0%}){recorded}, too few fluctuations to measure the autocorrelation "
                "behind the error bars")
    if stuck:
        return (f"{stuck} of {fractions.size} chains never move{recorded}: each repeats its first configuration, "
                "which weighs in every estimate as if it had been sampled")
    return ""


def _disagreeing_chains(samples: SampleSet, quantities: dict[str, Any]) -> str:
    """Why unweighted correlated chains are not converged: the largest split R̂ above :data:`MAX_R_HAT`; empty if none."""
    if not samples.correlated or samples.is_weighted:
        return ""
    values = {name: r_hat(samples, f) for name, f in quantities.items()}
    name, worst = max(values.items(), key=lambda item: -math.inf if math.isnan(item[1]) else item[1])
    if not worst > MAX_R_HAT:
        return ""
    return (f"the chains have not converged: split R-hat of {name} is {worst:.3g} (> {MAX_R_HAT}), so they disagree "
            "about part of the distribution, and every estimate of this run may miss it")


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
    fractions = move_fractions(samples[np.isfinite(samples.log_weights)])
    table["move_fraction"] = float(np.nanmean(fractions)) if np.isfinite(fractions).any() else math.nan
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
        One row per quantity both have: ``quantity``, ``value``, ``error``, ``reliable`` (this
        run's flag: when False, ``z`` does not measure the gap, since the error bar does not
        measure the error), ``reference``, ``reference_error``, ``reference_method``, ``z``
        (difference over the combined error; ``nan`` when that is 0).
        For ΔF the best reference available is used (exact, then umbrella MD, then plain MD
        when it is marked reliable).
    """
    rows = []

    def add(quantity: str, est: dict[str, Any], ref_value: float, ref_error: float, method: str) -> None:
        combined = (est["error"] ** 2 + ref_error**2) ** 0.5
        z = (est["value"] - ref_value) / combined if combined > 0 else float("nan")
        rows.append({"quantity": quantity, "value": est["value"], "error": est["error"], "reliable": est["reliable"],
                     "reference": ref_value, "reference_error": ref_error, "reference_method": method, "z": z})

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
        if not row.get("reliable", True):
            gap = ((f"difference {row['z']:+.1f} σ, but " if math.isfinite(row["z"]) else "no comparison: ")
                   + "this run's estimate is UNRELIABLE (see above): its error bar does not measure its error")
        else:
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
        if isinstance(diagnostics.get("acceptance_rate"), (int, float)) and not rates:
            rates = [f"{diagnostics['acceptance_rate']:.2f}"]
        moves = diagnostics.get("move_fraction", math.nan)
        moves_note = f"; {moves:.2f} of stored steps move" if np.isfinite(moves) else ""
        note = f"{diagnostics['n_chains']} chains; " + "; ".join(
            f"{name}: tau {v['tau']:.1f}, R-hat {v['r_hat']:.3f}" for name, v in diagnostics.items()
            if isinstance(v, dict))
        disagree = bool(np.isfinite(worst) and worst > 1.1)
        still = bool(np.isfinite(moves) and moves < MIN_MOVE_FRACTION)
        flag = "!! " if disagree or still else ""
        rows.append((f"{flag}chains", f"{worst:.3f}" if np.isfinite(worst) else "n/a", "",
                     ("max R-hat > 1.1: chains disagree; " if disagree else "max R-hat; ")
                     + (f"chains barely move (< {MIN_MOVE_FRACTION:.0%} of steps); " if still else "") + note
                     + ("; acceptance " + ", ".join(rates) if rates else "") + moves_note))
    header = ("quantity", "value", "error", "notes")
    widths = [max(_shown_width(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        f"{q}{' ' * (widths[0] - _shown_width(q))}  {v:>{widths[1]}}  {e:>{widths[2]}}  {note}".rstrip()
        for q, v, e, note in [header, *rows]
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
