"""Calibration of the error bars: every weighted or chain sampler on targets with exact answers.

For each (target, sampler, seed) the sampler draws a small sample set, the estimation layer
(:func:`boltzflow.estimate.summarize`) turns it into estimates with errors and reliability flags,
and each estimate is compared with the exact answer: ``z = (estimate − exact) / error``. Over the
seeds, for each (target, sampler, quantity): the fraction flagged unreliable, and over the
unflagged estimates (and over all) the mean z with its standard error and the coverage of the
±2σ interval. Goal for the unflagged: |mean z| ≤ 0.3 and coverage ≥ 90 %. (With the default 40
seeds the mean z of a perfectly calibrated estimate has a standard error of 0.16 and its coverage
one of 0.035, so single misses near the bounds are expected; look at ``mean z ± se``.)

Targets (exact answers in ``data/reference.json`` under ``"exact"``, or by quadrature):

* ``four_wells_2d``: curved 2D landscape with four wells, barriers 4–12 kT. Its flows are trained
  on deliberately mis-weighted data: equally long MALA chains started in each of the four wells
  (which barely cross), used with uniform weights — every well gets about a quarter of the data
  though P(A) = 0.40 and P(B) = 0.04.
* ``gaussian_10d_correlated``: correlated anisotropic 10D Gaussian; flows trained on exact draws.
* ``torsion_4atom``: an OpenMM 4-atom chain whose dihedral distribution is exactly
  ``exp(−V(φ)/kT)`` (``systems/torsion_4atom``): the target of the OpenMM samplers ``md`` and
  ``umbrella`` (on the toy targets ``md`` is MALA, so it is not run there).

Quantities: ``p_a`` (the expectation of the indicator of state A), ``mean_energy`` ⟨u⟩, the
mean of one observable (``mean_a``, ``mean_x9``, ``mean_phi``), ``delta_f_b_minus_a`` and, for
samplers with a normalised proposal, ``log_z``.

Flow models are trained once per target (fixed seeds, one thread: deterministic) with the
command-line trainers (``boltzflow train``, ``train --snf``, ``train-cnf``) and cached in
``OUT/models/<target>/``; each run's estimates are cached in ``OUT/runs/<target>/<sampler>/``, so
an interrupted benchmark continues where it stopped (a cached run whose sampler options differ from
the current budget is rerun). ``--fresh SAMPLER ...`` reruns those
samplers (after their code changed), ``--retrain`` retrains the flows (after the training code
changed; it also reruns every flow-based sampler).

Usage, from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/calibration.py [--out runs/calibration] [--seeds 40]
        [--targets four_wells_2d ...] [--samplers flow imh ...] [--quick] [--fresh mala ...] [--retrain]

Writes ``OUT/results.json`` (every per-seed estimate and the summary rows) and ``OUT/table.md``
(the markdown tables that are also printed: one row per quantity, then a compact one per sampler).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import boltzflow as bf
from boltzflow.cli import main as cli_main
from boltzflow.estimate import summarize
from boltzflow.reference_data import reference_estimates

FLOW_SAMPLERS = ("flow", "imh", "isir", "neutra")  # spline flow ``model.pt``
CNF_SAMPLERS = ("cnf-exact", "fp-is", "fp", "fp-smc")  # continuous flow ``cnf.pt``
MODEL_FILES = {**{s: "model.pt" for s in FLOW_SAMPLERS}, **{s: "cnf.pt" for s in CNF_SAMPLERS}, "snf": "snf.pt"}
GOAL_MEAN_Z, GOAL_COVERAGE = 0.3, 0.9


@dataclasses.dataclass(frozen=True)
class Target:
    """A system with exact answers and the sampling budget of each sampler on it.

    Attributes
    ----------
    system : str
        Built-in system name.
    observable : str
        The observable whose mean is estimated.
    samplers : dict of str to dict
        Sampler name to its options (``n`` included) at full budget.
    data : str
        Flow training data: ``"wells"`` (equal MALA chains in each well, mis-weighted) or
        ``"exact"`` (exact Gaussian draws); ``""`` for no flows.
    """

    system: str
    observable: str
    samplers: dict[str, dict[str, Any]]
    data: str = ""


def _toy_budgets(cnf_exact_n: int) -> dict[str, dict[str, Any]]:
    """Sampler options shared by the two toy targets (a few seconds per run; fp-smc at its defaults)."""
    return {
        "flow": {"n": 4000},
        "snf": {"n": 20000},
        "cnf-exact": {"n": cnf_exact_n},
        "fp-is": {"n": 4000},
        "fp": {"n": 2000, "n_chains": 16, "warmup": 100},
        "fp-smc": {"n": 512},
        "imh": {"n": 4000, "n_chains": 16, "warmup": 100},
        "isir": {"n": 2000, "n_chains": 16, "warmup": 20, "n_proposals": 8},
        "neutra": {"n": 2000, "n_chains": 16, "warmup": 200, "kernel": "mala"},
        "adaptive": {"n": 2000, "n_chains": 16, "model": "new", "adapt_iterations": 100, "train_steps": 5},
        "mala": {"n": 4000, "n_chains": 16, "warmup": 1000, "thin": 10},
        "hmc": {"n": 4000, "n_chains": 16, "warmup": 400},
    }


TARGETS: dict[str, Target] = {
    "four_wells_2d": Target("four_wells_2d", "a", _toy_budgets(cnf_exact_n=1000), data="wells"),
    "gaussian_10d_correlated": Target("gaussian_10d_correlated", "x9", _toy_budgets(cnf_exact_n=1000), data="exact"),
    "torsion_4atom": Target("torsion_4atom", "phi", {
        "md": {"n": 4000, "thin": 250, "equilibration_ps": 5.0},
        "umbrella": {"n": 4000, "thin": 250, "equilibration_ps": 5.0, "metadynamics_ns": 0.2},
    }),
}

# Flow training (small on purpose: the benchmark tests the error bars of whatever flow it gets).
TRAIN_ARGS = {
    "model.pt": ["train", "--layers", "4", "--hidden", "32", "32", "--iterations", "300", "--lr-final", "1e-4"],
    "snf.pt": ["train", "--snf", "--layers", "4", "--hidden", "32", "32", "--iterations", "200"],
    "cnf.pt": ["train-cnf", "--hidden", "64", "64", "--iterations", "500", "--sigma-f-iterations", "200",
               "--sigma-f-pairs", "1024"],
}
N_TRAINING = 2000


def load_target_module(system: bf.System) -> ModuleType:
    """The ``system.py`` module of a ``type = "python"`` system folder."""
    spec = importlib.util.spec_from_file_location(f"calibration_{system.name}", Path(system.source) / "system.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def exact_answers(target: Target, system: bf.System) -> dict[str, float]:
    """Exact values of the benchmark's quantities: ``data/reference.json`` ``"exact"``, else the system module's.

    Returns
    -------
    dict
        ``p_a``, ``mean_energy``, ``mean_<observable>``, ``delta_f_b_minus_a`` and (where defined)
        ``log_z``, in the order of the table.
    """
    exact = (reference_estimates(target.system) or {}).get("exact") or load_target_module(system).exact_answers()
    mean_obs = f"mean_{target.observable}"
    out = {"p_a": exact["p_a"], "mean_energy": exact["mean_energy"], mean_obs: exact[mean_obs],
           "delta_f_b_minus_a": exact["delta_f_b_minus_a"]}
    if "log_z" in exact:
        out["log_z"] = exact["log_z"]
    return out


def training_data(target: Target, system: bf.System, folder: Path) -> Path:
    """Write (once) the flows' training set of ``target`` to ``folder`` and return it.

    ``"wells"``: 4 × 4 MALA chains of 125 stored states each, started in the four wells (a = −2,
    −1, 1, 2 on the valley floor), pooled with uniform ML weighting. ``"exact"``: exact draws
    from the Gaussian (the system module's ``MEAN`` and ``COVARIANCE``).
    """
    if (folder / "samples.npz").exists():
        return folder
    if target.data == "wells":
        parts = []
        for i, a in enumerate((-2.0, -1.0, 1.0, 2.0)):
            start = dataclasses.replace(system, x0=torch.tensor([a, 0.4 * math.sin(1.5 * a)], dtype=torch.float64))
            run = bf.sample(start, "mala", n=N_TRAINING // 4, seed=1000 + i, n_chains=4, thin=5, warmup=500,
                            progress=False)
            parts.append(dataclasses.replace(run, chain=run.chain + 4 * i))
        data = bf.SampleSet.concatenate(parts)
        data.metadata["ml_weighting"] = "uniform"
    elif target.data == "exact":
        module = load_target_module(system)
        x = np.random.default_rng(1000).multivariate_normal(module.MEAN, module.COVARIANCE, size=N_TRAINING)
        data = bf.SampleSet(x=x, energies=system.energy.evaluate(x, need_gradient=False).energy,
                            chain=np.zeros(N_TRAINING, dtype=np.int64),  # one block, so 10 % can be held out
                            metadata={"sampler": "exact", "correlated": False})
    else:
        raise ValueError(f"target '{target.system}' has no training data")
    data.save(folder)
    return folder


def ensure_model(target: Target, system: bf.System, model_dir: Path, file: str, quick: bool) -> Path:
    """Train (once) the model ``file`` of ``target`` into ``model_dir`` with the command-line trainer."""
    path = model_dir / file
    if path.exists():
        return path
    args = list(TRAIN_ARGS[file])
    if quick:
        i = args.index("--iterations") + 1
        args[i] = str(int(args[i]) // 2)
    if file != "snf.pt":
        args += ["--data", str(training_data(target, system, model_dir / "data"))]
    args += [target.system, "--out", str(model_dir), "--seed", "0", "--threads", "1", "--quiet"]
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = cli_main(args)
    (model_dir / f"{file}.log").write_text(log.getvalue())
    if code != 0 or not path.exists():
        raise RuntimeError(f"training {file} for {target.system} failed (exit {code}): {log.getvalue()}")
    return path


def sampler_options(target: Target, sampler: str, quick: bool) -> dict[str, Any]:
    """The sampler's options on ``target``; ``--quick`` halves the number of samples."""
    options = dict(target.samplers[sampler])
    if quick:
        options["n"] = max(options["n"] // 2, 64)
    return options


def run_one(target: Target, system: bf.System, sampler: str, seed: int, model: Path | None,
            quick: bool) -> dict[str, Any]:
    """One (target, sampler, seed) run: its estimates (:meth:`Estimate.to_dict`) per quantity."""
    options = sampler_options(target, sampler, quick)
    n = options.pop("n")
    model_option = {} if model is None else {"model": str(model)}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreliable estimates are flagged in their Estimate
        samples = bf.sample(system, sampler, n=n, seed=seed, progress=False, **options, **model_option)
        summary = summarize(samples, observables={"p_a": system.states["A"],
                                                  target.observable: system.observables[target.observable]},
                            states=(system.states["A"], system.states["B"]), seed=seed)
    estimates = {"p_a": summary["observables"]["p_a"], "mean_energy": summary["mean_energy"],
                 f"mean_{target.observable}": summary["observables"][target.observable],
                 "delta_f_b_minus_a": summary["delta_f"]}
    if "log_z" in summary:
        estimates["log_z"] = summary["log_z"]
    return {"target": target.system, "sampler": sampler, "seed": seed, "n": n, "options": options,
            "model": None if model is None else str(model),
            "seconds": time.perf_counter() - start, "relative_ess": summary["relative_ess"],
            "estimates": estimates}


def _budget_changed(cached: dict[str, Any], target: Target, sampler: str, quick: bool) -> bool:
    """True when a cached run used other sampler options than the current ones (it is then rerun)."""
    if "failure" in cached:
        return False
    options = sampler_options(target, sampler, quick)
    return cached["n"] != options.pop("n") or cached["options"] != options


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` atomically (a killed run never leaves a half-written cache file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def z_statistics(values: np.ndarray, errors: np.ndarray, exact: float) -> dict[str, float]:
    """Mean z (with its standard error) and ±2σ coverage of estimates against the exact value.

    A non-finite z (infinite value, zero or infinite error) counts as outside the interval and is
    left out of the mean.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.asarray(values, dtype=float) - exact) / np.asarray(errors, dtype=float)
    finite = z[np.isfinite(z)]
    n = len(z)
    return {
        "n": n,
        "mean_z": float(finite.mean()) if len(finite) else math.nan,
        "mean_z_se": float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan,
        "coverage": float((np.abs(finite) <= 2.0).sum() / n) if n else math.nan,
    }


def calibration_rows(results: list[dict[str, Any]], exact: dict[str, dict[str, float]],
                     error_scale: float = 1.0) -> list[dict[str, Any]]:
    """One summary row per (target, sampler, quantity) over the seeds of ``results``.

    Parameters
    ----------
    results : list of dict
        :func:`run_one` results (failed runs, with ``"failure"``, count as flagged).
    exact : dict
        Target name to :func:`exact_answers`.
    error_scale : float
        Multiplies every reported error (a test checks the statistics catch errors ÷ 3).

    Returns
    -------
    list of dict
        ``target``, ``sampler``, ``quantity``, ``runs``, ``flagged`` (fraction), ``unflagged`` and
        ``all`` (:func:`z_statistics`), ``median_error``, ``median_seconds``, ``goal_met``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["target"], r["sampler"]), []).append(r)
    rows = []
    for (target, sampler), runs in groups.items():
        ok = [r for r in runs if "estimates" in r]
        for q in exact[target]:
            if not any(q in r["estimates"] for r in ok):
                continue
            est = [r["estimates"][q] for r in ok]
            value = np.array([e["value"] for e in est], dtype=float)
            error = np.array([e["error"] for e in est], dtype=float) * error_scale
            good = np.array([bool(e["reliable"]) for e in est], dtype=bool)
            unflagged = z_statistics(value[good], error[good], exact[target][q])
            goal = (unflagged["n"] == 0 or (abs(unflagged["mean_z"]) <= GOAL_MEAN_Z
                                            and unflagged["coverage"] >= GOAL_COVERAGE))
            rows.append({
                "target": target, "sampler": sampler, "quantity": q, "runs": len(runs),
                "flagged": 1.0 - good.sum() / len(runs), "unflagged": unflagged,
                "all": z_statistics(value, error, exact[target][q]),
                "median_error": float(np.median(error[good])) if good.any() else math.nan,
                "median_seconds": float(np.median([r["seconds"] for r in ok])) if ok else math.nan,
                "goal_met": bool(goal),
            })
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (``✗`` marks a row whose unflagged estimates miss the goal)."""

    def z_text(s: dict[str, float]) -> str:
        return "–" if s["n"] == 0 or not math.isfinite(s["mean_z"]) else (
            f"{s['mean_z']:+.2f} ± {s['mean_z_se']:.2f}" if math.isfinite(s["mean_z_se"]) else f"{s['mean_z']:+.2f}")

    def cover(s: dict[str, float]) -> str:
        return "–" if s["n"] == 0 else f"{100 * s['coverage']:.0f} %"

    lines = ["| target | sampler | quantity | runs | flagged | mean z (unflagged) | coverage (unflagged) | "
             "mean z (all) | coverage (all) | median error | s/run | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['sampler']} | {r['quantity']} | {r['runs']} | {100 * r['flagged']:.0f} % | "
            f"{z_text(r['unflagged'])} | {cover(r['unflagged'])} | {z_text(r['all'])} | {cover(r['all'])} | "
            f"{r['median_error']:.3g} | {r['median_seconds']:.1f} | {'✓' if r['goal_met'] else '✗'} |")
    return "\n".join(lines)


def matrix_table(rows: list[dict[str, Any]]) -> str:
    """A compact markdown table: one row per (target, sampler), one cell per quantity.

    Each cell is ``mean z / coverage`` over the unflagged runs, the flagged fraction when nonzero,
    and ``✗`` when the goal is missed (``all flagged`` when no run is left).
    """
    quantities = list(dict.fromkeys(r["quantity"] if not r["quantity"].startswith("mean_") or r["quantity"] ==
                                    "mean_energy" else "mean_obs" for r in rows))
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        q = r["quantity"] if not r["quantity"].startswith("mean_") or r["quantity"] == "mean_energy" else "mean_obs"
        s = r["unflagged"]
        flagged = f", {100 * r['flagged']:.0f} % flagged" if r["flagged"] > 0 else ""
        if s["n"] == 0:
            text = "all flagged"
        else:
            text = f"{s['mean_z']:+.2f} / {100 * s['coverage']:.0f} %{flagged}{'' if r['goal_met'] else ' ✗'}"
        cells.setdefault((r["target"], r["sampler"]), {})[q] = text
    lines = ["| target | sampler | " + " | ".join(quantities) + " |", "|---|---|" + "---|" * len(quantities)]
    for (target, sampler), row in cells.items():
        lines.append(f"| {target} | {sampler} | " + " | ".join(row.get(q, "") for q in quantities) + " |")
    return "\n".join(lines)


def run_benchmark(out: Path, targets: list[str], samplers: list[str] | None, seeds: int, quick: bool = False,
                  fresh: list[str] | None = None, retrain: bool = False, progress: bool = True
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run (or continue) the benchmark and return ``(per-seed results, summary rows)``.

    Parameters
    ----------
    out : Path
        Output folder (models, per-run cache, ``results.json``, ``table.md``).
    targets : list of str
        Names from :data:`TARGETS`.
    samplers : list of str, optional
        Samplers to run (each only on the targets that define it); default: all.
    seeds : int
        Seeds ``0 … seeds−1``.
    quick : bool
        Half the samples per run and half the training iterations.
    fresh : list of str, optional
        Samplers whose cached runs are discarded and rerun (``"all"``: every sampler).
    retrain : bool
        Discard and retrain the flows (and rerun the flow-based samplers).
    progress : bool
        Show a progress bar.
    """
    torch.set_num_threads(1)
    fresh = list(fresh or [])
    if retrain:
        fresh += [*MODEL_FILES, "adaptive"]
    jobs, exact, systems = [], {}, {}
    for name in targets:
        target = TARGETS[name]
        systems[name] = system = bf.load_system(target.system)
        exact[name] = exact_answers(target, system)
        if retrain and (out / "models" / name).exists():
            shutil.rmtree(out / "models" / name)
        for sampler in target.samplers:
            if samplers is not None and sampler not in samplers:
                continue
            folder = out / "runs" / name / sampler
            if ("all" in fresh or sampler in fresh) and folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(target, sampler, seed, folder / f"seed{seed:03d}.json") for seed in range(seeds)]
    results = []
    bar = tqdm(jobs, desc="calibration", unit="run", disable=not progress, dynamic_ncols=True)
    for target, sampler, seed, path in bar:
        bar.set_postfix_str(f"{target.system} {sampler} seed {seed}")
        if not path.exists() or _budget_changed(json.loads(path.read_text()), target, sampler, quick):
            system = systems[target.system]
            model = None
            if sampler in MODEL_FILES:
                model = ensure_model(target, system, out / "models" / target.system, MODEL_FILES[sampler], quick)
            try:
                result = run_one(target, system, sampler, seed, model, quick)
            except Exception as err:  # a crashed run is a result too: it is reported, not retried
                result = {"target": target.system, "sampler": sampler, "seed": seed,
                          "failure": f"{type(err).__name__}: {err}"}
            _write_json(path, result)
        results.append(json.loads(path.read_text()))
    rows = calibration_rows(results, exact)
    _write_json(out / "results.json", {"exact": exact, "quick": quick, "rows": rows, "runs": results})
    return results, rows


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output folder (default: runs/calibration, or runs/calibration_quick)")
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--samplers", nargs="+", help="samplers to run (default: all)")
    parser.add_argument("--seeds", type=int, help="number of seeds (default: 40, quick: 4)")
    parser.add_argument("--quick", action="store_true", help="4 seeds, half the samples and training iterations")
    parser.add_argument("--fresh", nargs="+", default=[], help="rerun these samplers ('all': every one)")
    parser.add_argument("--retrain", action="store_true", help="retrain the flows and rerun the samplers using them")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    known = set().union(*(t.samplers for t in TARGETS.values()))
    if args.samplers and set(args.samplers) - known:
        parser.error(f"unknown sampler(s) {sorted(set(args.samplers) - known)}; benchmarked: {sorted(known)}")
    out = Path(args.out or ("runs/calibration_quick" if args.quick else "runs/calibration"))
    seeds = args.seeds or (4 if args.quick else 40)
    start = time.perf_counter()
    results, rows = run_benchmark(out, args.targets, args.samplers, seeds, quick=args.quick, fresh=args.fresh,
                                  retrain=args.retrain, progress=not args.quiet)
    table = markdown_table(rows)
    (out / "table.md").write_text(table + "\n\n" + matrix_table(rows) + "\n")
    print(table + "\n\n" + matrix_table(rows))
    failures = [r for r in results if "failure" in r]
    for r in failures:
        print(f"FAILED RUN {r['target']} {r['sampler']} seed {r['seed']}: {r['failure']}")
    misses = [r for r in rows if not r["goal_met"]]
    print(f"\n{len(rows) - len(misses)}/{len(rows)} rows meet the goal (unflagged: |mean z| <= {GOAL_MEAN_Z}, "
          f"coverage >= {GOAL_COVERAGE:.0%}); {len(failures)} failed runs; {time.perf_counter() - start:.0f} s; "
          f"results in {out}/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
