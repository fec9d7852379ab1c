"""How fast ``boltzflow estimate`` is on the main job's 50 000 flow samples, and what its parts cost.

Prints, as medians over repeats measured in this one run,

* the wall time of ``python -c "import boltzflow"`` and ``python -c "import boltzflow.estimate"``
  in fresh subprocesses,
* the wall time of ``boltzflow estimate RUN`` (fresh subprocess) with the default analytic
  (delta-method) errors and with ``--error bootstrap``,
* in-process: :func:`~boltzflow.estimate.summarize` of the run (the system's observables and
  states) with analytic and with bootstrap errors — time and every error side by side, with ratios,

and the run's Pareto k̂.

The run folder defaults to ``/tmp/boltzflow-bench-ala2``, made once (about 30 s on 2 cores) by
``boltzflow sample alanine_dipeptide_implicit --n 50000 --seed 0`` if it does not exist.

Usage, from the repository root with boltzflow installed (``pip install -e .``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_estimate.py [--run DIR] [--repeats 3] [--n-bootstrap 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

DEFAULT_RUN = Path("/tmp/boltzflow-bench-ala2")


def median_wall(command: list[str], repeats: int) -> float:
    """Median wall time (s) of a subprocess over ``repeats`` runs; raises if it fails."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_call(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median time (s) of ``fn()`` over ``repeats`` calls, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def ensure_run(run: Path) -> None:
    """Sample the main job into ``run`` unless it already holds samples."""
    if not (run / "samples.npz").is_file():
        print(f"making {run} (boltzflow sample alanine_dipeptide_implicit --n 50000) ...", flush=True)
        subprocess.run([sys.executable, "-m", "boltzflow.cli", "sample", "alanine_dipeptide_implicit", "--n", "50000",
                        "--seed", "0", "--out", str(run), "--no-plot", "--quiet"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder of the main job")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median)")
    parser.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap resamples")
    args = parser.parse_args()
    ensure_run(args.run)
    python, cli = sys.executable, [sys.executable, "-m", "boltzflow.cli", "estimate", str(args.run)]

    print(f"medians of {args.repeats} repeats; run {args.run}\n")
    rows = [
        ("python -c 'import boltzflow'", median_wall([python, "-c", "import boltzflow"], args.repeats)),
        ("python -c 'import boltzflow.estimate'",
         median_wall([python, "-c", "import boltzflow.estimate"], args.repeats)),
        ("boltzflow estimate RUN (analytic errors)", median_wall(cli, args.repeats)),
        (f"boltzflow estimate RUN --error bootstrap ({args.n_bootstrap})",
         median_wall([*cli, "--error", "bootstrap", "--n-bootstrap", str(args.n_bootstrap)], args.repeats)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'command':<{width}}  wall (s)")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.2f}")

    import boltzflow as bf
    from boltzflow.estimate import pareto_k, summarize

    samples = bf.SampleSet.load(args.run)
    system = bf.load_system(samples.metadata["system"])
    observables, states = dict(system.observables), (system.states["A"], system.states["B"])
    t_analytic, analytic = median_call(lambda: summarize(samples, observables, states), args.repeats)
    t_boot, boot = median_call(
        lambda: summarize(samples, observables, states, error="bootstrap", n_bootstrap=args.n_bootstrap), args.repeats
    )
    print(f"\nsummarize() of {len(samples)} samples, Pareto k̂ {pareto_k(samples):.3f}: "
          f"analytic {t_analytic:.3f} s, bootstrap ({args.n_bootstrap}) {t_boot:.3f} s "
          f"(x{t_boot / t_analytic:.1f})")
    pairs = [("<u>", analytic["mean_energy"], boot["mean_energy"])]
    pairs += [(f"<{name}>", analytic["observables"][name], boot["observables"][name]) for name in observables]
    pairs += [(key, analytic[key], boot[key]) for key in ("delta_f", "log_z") if key in analytic]
    print(f"{'estimate':<10}  {'value':>10}  {'analytic':>10}  {'bootstrap':>10}  {'ratio':>6}")
    for name, a, b in pairs:
        print(f"{name:<10}  {a['value']:10.4f}  {a['error']:10.5f}  {b['error']:10.5f}  {a['error'] / b['error']:6.3f}")


if __name__ == "__main__":
    main()
