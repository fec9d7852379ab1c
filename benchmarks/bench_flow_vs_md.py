"""Effective samples per second: the shipped flow (with reweighting) against plain MD, same observables.

For each observable ``f`` the effective sample size is ``Var(f) / σ²``, with σ the standard error
the estimation layer attaches to ``<f>`` (:func:`boltzflow.estimate.expectation`): bootstrap for
the independent, importance-weighted flow samples; the statistical inefficiency ``g = 1 + 2τ``
(integrated autocorrelation time, pymbar) for the MD trajectory. It is the number of independent
exact samples that would give the same error, so it compares the two fairly per observable. For
a state indicator that MD entered fewer than 10 times no number is given: its autocorrelation time
(the return time) cannot be measured from the run, and pymbar's estimate would be meaningless.
Wall times include everything a user waits
for: drawing flow samples *and* evaluating their energies (OpenMM), or integrating MD.

The MD baseline is LangevinMiddle at 1 fs, 1/ps friction, frames every ``--frame-ps`` (the
shipped MD settings; OpenMM Reference platform, the fastest for 22 atoms here). The flow's
one-off training cost is printed separately (from the model's metadata).

Usage, from the repository root::

    python benchmarks/bench_flow_vs_md.py [--system alanine_dipeptide_implicit] [--md-ns 1.0] [--flow-n 20000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

import boltzflow as bf
from boltzflow.estimate import LowESSWarning, expectation
from boltzflow.flows import load_model
from boltzflow.reference_data import shipped_model


def observables(system: bf.System) -> dict[str, object]:
    """Energy plus the system's declared observables, and cos φ / 1[φ > 0] for molecules."""
    table: dict[str, object] = {"u": None}
    table.update(system.observables)
    if "phi" in system.observables:
        phi = system.observables["phi"]
        table["1[phi>0]"] = lambda x: (phi(x) > 0).astype(float)
    return table


def effective_samples(samples: bf.SampleSet, table: dict[str, object]) -> dict[str, float]:
    """Per observable, ``Var(f) / error(<f>)²``: how many independent exact samples the estimate is worth.

    ``Var(f)`` is the (weighted) variance over the run; ``nan`` when ``f`` never varied (e.g. a state
    never visited), since then the run cannot say anything about it.
    """
    out = {}
    weights = np.exp(samples.log_weights - samples.log_weights.max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)
        for name, f in table.items():
            values = samples.energies if f is None else np.asarray(f(samples.x), dtype=float)
            ok = weights > 0
            mean = np.average(values[ok], weights=weights[ok])
            variance = np.average((values[ok] - mean) ** 2, weights=weights[ok])
            error = expectation(samples, values).error
            out[name] = variance / error**2 if variance > 0 and error > 0 else float("nan")
            if name.startswith("1[") and samples.correlated and _entries(values, samples.chain) < MIN_ENTRIES:
                out[name] = float("nan")  # an autocorrelation time cannot be measured from a handful of visits
    return out


MIN_ENTRIES = 10


def _entries(indicator: np.ndarray, chain: np.ndarray) -> int:
    """How many times the chains entered the state (0 → 1 steps, plus chains starting inside)."""
    count = 0
    for c in np.unique(chain):
        series = indicator[chain == c] > 0.5
        count += int(series[0]) + int(np.count_nonzero(series[1:] & ~series[:-1]))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="alanine_dipeptide_implicit")
    parser.add_argument("--md-ns", type=float, default=1.0, help="simulated MD time (ns)")
    parser.add_argument("--frame-ps", type=float, default=0.1, help="MD frame spacing (ps)")
    parser.add_argument("--flow-n", type=int, default=20_000, help="flow samples")
    args = parser.parse_args()
    torch.set_num_threads(1)
    system = bf.load_system(args.system)
    model = shipped_model(system.name)
    if model is None:
        raise SystemExit(f"no shipped flow for {system.name}")
    table = observables(system)

    start = time.perf_counter()
    flow_samples = bf.sample(system, sampler="flow", n=args.flow_n, seed=7, progress=False)
    flow_wall = time.perf_counter() - start

    start = time.perf_counter()
    md_samples = bf.sample(system, sampler="md", n=int(round(args.md_ns * 1000 / args.frame_ps)), seed=7,
                           thin=int(round(args.frame_ps * 1000)), equilibration_ps=10.0, progress=False)
    md_wall = time.perf_counter() - start

    ess_flow, ess_md = effective_samples(flow_samples, table), effective_samples(md_samples, table)
    print(f"{system.name}: flow {args.flow_n} samples in {flow_wall:.1f} s (relative Kish ESS "
          f"{bf.estimate.relative_ess(flow_samples):.3f}); MD {args.md_ns:g} ns = {len(md_samples)} frames in "
          f"{md_wall:.1f} s\n")
    header = f"{'observable':<10} {'ESS flow':>9} {'ESS MD':>9} {'ESS/s flow':>11} {'ESS/s MD':>10} {'ratio':>8}"
    print(header)
    print("-" * len(header))
    for name in table:
        rate_flow, rate_md = ess_flow[name] / flow_wall, ess_md[name] / md_wall
        if np.isfinite(rate_md):
            print(f"{name:<10} {ess_flow[name]:9.0f} {ess_md[name]:9.1f} {rate_flow:11.1f} {rate_md:10.2f} "
                  f"{rate_flow / rate_md:8.1f}")
        else:
            print(f"{name:<10} {ess_flow[name]:9.0f} {'—':>9} {rate_flow:11.1f} {'—':>10}   MD: fewer than "
                  f"{MIN_ENTRIES} visits, no error estimate")
    metadata = load_model(model, system).metadata
    train_seconds = metadata.get("train_seconds")
    if train_seconds:
        print(f"\none-off cost of the shipped model: training {train_seconds / 60:.0f} min on 2 cores, plus "
              f"{metadata.get('data_seconds', 0) / 60:.0f} min of MD for its training data")


if __name__ == "__main__":
    main()
