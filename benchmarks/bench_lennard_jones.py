"""Benchmark the numba Lennard-Jones kernel (energy + forces) against torch autograd.

Usage::

    python benchmarks/bench_lennard_jones.py [--batch 10000] [--repeats 5]

For LJ13 and LJ55 (3D, pairs counted once) it prints

* the first-call cost in a fresh Python process (JIT compilation, or loading numba's on-disk
  cache when it exists: run the script twice to see the caching effect; LJ13 and LJ55 share one
  compiled kernel, so only the first fresh process after an edit compiles),
* the median time of ``LennardJonesEnergy.evaluate`` on one batch (energy and forces, including
  the base class's input/output checks) and of the bare kernel with preallocated outputs,
* evaluations per second and pair interactions per second of ``evaluate``,
* the torch autograd baseline (:func:`boltzflow.energy.torch_reference.lennard_jones_torch`,
  forward + ``backward``, float64, same batch, same run) and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numba
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from boltzflow.energy.lennard_jones import LennardJonesEnergy, _lennard_jones_kernel  # noqa: E402
from boltzflow.energy.torch_reference import lennard_jones_torch  # noqa: E402

# Run in a fresh interpreter: time the import, then the first call, and ask numba whether the
# kernel was compiled or loaded from its cache.
_FIRST_CALL = """
import json, time
t0 = time.perf_counter()
import numpy as np
from boltzflow.energy.lennard_jones import LennardJonesEnergy, _lennard_jones_kernel
t1 = time.perf_counter()
LennardJonesEnergy({n}).evaluate(np.random.default_rng(0).normal(size=(2, {n} * 3)))
t2 = time.perf_counter()
stats = _lennard_jones_kernel.stats
print(json.dumps({{"import": t1 - t0, "first_call": t2 - t1,
                   "source": "cache" if sum(stats.cache_hits.values()) else "compiled"}}))
"""


def first_call_cost(n: int) -> dict:
    """Import time and first-call time of ``LennardJonesEnergy(n)`` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL.format(n=n)], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def lattice_clusters(n: int, batch: int, seed: int = 0) -> np.ndarray:
    """Jittered simple-cubic clusters (no overlaps), shape ``(batch, 3 n)``."""
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)[:n]
    rng = np.random.default_rng(seed)
    return (1.15 * grid[None] + 0.05 * rng.normal(size=(batch, n, 3))).reshape(batch, 3 * n)


def benchmark(n: int, batch: int, repeats: int) -> dict:
    """Time numba and torch on the same batch of LJ``n`` clusters."""
    first = first_call_cost(n)
    energy = LennardJonesEnergy(n)
    x = lattice_clusters(n, batch)

    t_numba = median_time(lambda: energy.evaluate(x), repeats)
    u_out, g_out = np.empty(batch), np.empty_like(x)
    n_chunks = min(batch, 4 * numba.get_num_threads())
    t_kernel = median_time(
        lambda: _lennard_jones_kernel(x, n_chunks, n, 3, 1.0, 1.0, True, u_out, g_out), repeats
    )

    def torch_energy_and_forces() -> torch.Tensor:
        xt = torch.tensor(x, requires_grad=True)
        u = lennard_jones_torch(xt, n, 3)
        u.sum().backward()
        return u

    t_torch = median_time(torch_energy_and_forces, repeats)
    u_torch = torch_energy_and_forces().detach().numpy()
    max_rel = float(np.max(np.abs(energy.evaluate(x).energy - u_torch) / np.abs(u_torch)))

    n_pairs = n * (n - 1) // 2
    return {
        "system": f"LJ{n}",
        "first": first,
        "numba": t_numba,
        "kernel": t_kernel,
        "evals_per_s": batch / t_numba,
        "pairs_per_s": batch * n_pairs / t_numba,
        "torch": t_torch,
        "speedup": t_torch / t_numba,
        "max_rel": max_rel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=10_000, help="configurations per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (medians are reported)")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    rows = [benchmark(n, args.batch, args.repeats) for n in (13, 55)]
    print(
        f"numba {numba.__version__} ({numba.get_num_threads()} threads, {numba.threading_layer()} layer), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, "
        f"load average {load_before:.2f} before the run; batch {args.batch}, float64, medians of {args.repeats}"
    )

    header = (
        f"{'system':<6} {'import s':>8} {'1st call s':>10} {'(source)':>10} {'numba ms':>9} {'kernel ms':>9} "
        f"{'evals/s':>10} {'pairs/s':>9} {'torch ms':>9} {'numba/torch':>12} {'max rel dU':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['system']:<6} {r['first']['import']:>8.2f} {r['first']['first_call']:>10.2f} "
            f"{'(' + r['first']['source'] + ')':>10} {r['numba'] * 1e3:>9.1f} {r['kernel'] * 1e3:>9.1f} "
            f"{r['evals_per_s']:>10.3g} {r['pairs_per_s']:>9.3g} {r['torch'] * 1e3:>9.1f} "
            f"{r['speedup']:>11.1f}x {r['max_rel']:>10.1e}"
        )
    print(
        "numba ms: LennardJonesEnergy.evaluate (energy + forces, with input/output checks); "
        "kernel ms: bare kernel, preallocated outputs;\n"
        "torch ms: lennard_jones_torch forward + backward; numba/torch: speed-up of evaluate over torch."
    )


if __name__ == "__main__":
    main()
