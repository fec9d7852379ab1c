"""Throughput of the OpenMM bridge on alanine dipeptide (vacuum and OBC2 implicit solvent).

For a batch of configurations perturbed from the PDB structure, prints energy + force
evaluations per second (median over repeats) of

* a plain single-Context Python loop (``setPositions``, ``getState``, unit-stripped
  ``getPotentialEnergy`` / ``getForces(asNumpy=True)``), the baseline,
* the same loop with lean accessors (forces copied straight into a numpy array),
* :class:`~boltzflow.energy.openmm_bridge.OpenMMEnergy` with 1 worker (in-process) and 2 workers,
* two independent processes evaluating half the batch each at the same time, without any
  communication: the ceiling for 2 workers on this machine,

and the per-call time of one energy + force call on the Reference and CPU platforms.

Usage, from the repository root with boltzflow importable (``pip install -e .`` or
``PYTHONPATH=.``)::

    python benchmarks/bench_openmm_bridge.py [--batch 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import time
import tomllib
from pathlib import Path
from typing import Callable

import numpy as np
import openmm
import openmm.unit as unit

from boltzflow.energy.openmm_bridge import OpenMMEnergy, n_cores
from boltzflow.energy.openmm_worker import ContextEvaluator, create_context
from boltzflow.systems.openmm_builder import build_openmm_system

SYSTEMS_DIR = Path(__file__).resolve().parents[1] / "systems"
SYSTEM_NAMES = ("alanine_dipeptide_vacuum", "alanine_dipeptide_implicit")
KJ_PER_MOL = unit.kilojoule_per_mole
KJ_PER_MOL_NM = unit.kilojoule_per_mole / unit.nanometer


def load(name: str) -> tuple[openmm.System, np.ndarray, str]:
    """System, PDB positions (nm) and configured platform of a system folder."""
    folder = SYSTEMS_DIR / name
    with open(folder / "system.toml", "rb") as f:
        definition = tomllib.load(f)
    system, _, positions = build_openmm_system(folder, definition)
    return system, positions, definition.get("platform", "Reference")


def plain_loop(context: openmm.Context, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: energies (kJ/mol) and forces (kJ/mol/nm) with OpenMM's public accessors."""
    energies = np.empty(len(x))
    forces = np.empty_like(x)
    for i, positions in enumerate(x):
        context.setPositions(positions)
        state = context.getState(getEnergy=True, getForces=True)
        energies[i] = state.getPotentialEnergy().value_in_unit(KJ_PER_MOL)
        forces[i] = state.getForces(asNumpy=True).value_in_unit(KJ_PER_MOL_NM)
    return energies, forces


def median_rates(methods: dict[str, Callable[[], object]], n: int, repeats: int) -> dict[str, float]:
    """Median evaluations per second of each method (each evaluates ``n`` configurations).

    Repeats are interleaved (one call of every method per round) so that load from other
    processes affects all methods alike.
    """
    for fn in methods.values():
        fn()  # warm-up (and worker start-up)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: n / float(np.median(t)) for name, t in times.items()}


def _timed_share(system_xml: str, platform: str, x: np.ndarray, repeats: int, barrier) -> float:
    """In a spawned process: median seconds to evaluate ``x`` with a lean loop, rounds in lockstep."""
    system = openmm.XmlSerializer.deserialize(system_xml)
    evaluator = ContextEvaluator(system, platform, {"Threads": "1"} if platform == "CPU" else {})
    evaluator.evaluate(x, True)
    times = []
    for _ in range(repeats):
        barrier.wait()
        t0 = time.perf_counter()
        evaluator.evaluate(x, True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def concurrent_ceiling(system: openmm.System, platform: str, x: np.ndarray, repeats: int, n_procs: int = 2) -> float:
    """Evaluations per second of ``n_procs`` independent processes each evaluating its share of
    ``x`` at the same time, with no communication: the most any ``n_procs``-worker pool can reach
    on this machine (it shows contention from other load, memory bandwidth, frequency scaling)."""
    mp = multiprocessing.get_context("spawn")
    with mp.Manager() as manager, concurrent.futures.ProcessPoolExecutor(n_procs, mp_context=mp) as pool:
        barrier = manager.Barrier(n_procs)
        xml = openmm.XmlSerializer.serialize(system)
        shares = np.array_split(x, n_procs)
        futures = [pool.submit(_timed_share, xml, platform, share, repeats, barrier) for share in shares]
        seconds = max(f.result() for f in futures)
    return len(x) / seconds


def per_call_us(
    system: openmm.System, positions: np.ndarray, platform: str, properties: dict, repeats: int = 200
) -> float:
    """Median microseconds of one energy + force call (bridge's lean loop) at ``positions``."""
    evaluator = ContextEvaluator(system, platform, properties)
    one = positions[None]
    times = []
    for _ in range(repeats + 5):
        t0 = time.perf_counter()
        evaluator.evaluate(one, True)
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times[5:]))


def benchmark(name: str, batch: int, repeats: int) -> dict[str, float | str]:
    system, positions, platform = load(name)
    rng = np.random.default_rng(0)
    x = positions[None] + 0.005 * rng.standard_normal((batch, *positions.shape))
    flat = x.reshape(batch, -1)
    row: dict[str, float | str] = {"system": name, "platform": platform}

    context = create_context(system, platform)
    lean = ContextEvaluator(system, platform)
    with (
        OpenMMEnergy(system, 300.0, platform=platform, n_workers=1) as bridge_1,
        OpenMMEnergy(system, 300.0, platform=platform, n_workers=2) as bridge_2,
    ):
        methods = {
            "plain loop": lambda: plain_loop(context, x),
            "lean loop": lambda: lean.evaluate(x, True),
            "bridge 1w": lambda: bridge_1.evaluate(flat),
            "bridge 2w": lambda: bridge_2.evaluate(flat),
        }
        row.update(median_rates(methods, batch, repeats))
    row["2 procs, no IPC"] = concurrent_ceiling(system, platform, x, repeats)

    for platform_name, properties in [("Reference", {}), ("CPU", {"Threads": "1"}), ("CPU", {"Threads": str(n_cores())})]:
        label = platform_name if not properties else f"{platform_name} {properties['Threads']}t"
        row[f"{label} us/call"] = per_call_us(system, positions, platform_name, properties)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2000, help="configurations per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    args = parser.parse_args()

    print(f"{n_cores()} cores, OpenMM {openmm.__version__}, batch {args.batch}, median of {args.repeats} repeats")
    rows = [benchmark(name, args.batch, args.repeats) for name in SYSTEM_NAMES]

    print("\nE+F evaluations per second (ratio vs plain loop)")
    cols = ["plain loop", "lean loop", "bridge 1w", "bridge 2w", "2 procs, no IPC"]
    print(f"{'system':<28} {'platform':<10}" + "".join(f"{c:>22}" for c in cols))
    for row in rows:
        cells = "".join(f"{row[c]:>12,.0f} ({row[c] / row['plain loop']:4.2f}x)" for c in cols)
        print(f"{row['system']:<28} {row['platform']:<10}{cells}")

    print("\nOne E+F call at the PDB structure (median, microseconds)")
    call_cols = [k for k in rows[0] if k.endswith("us/call")]
    print(f"{'system':<28}" + "".join(f"{c:>20}" for c in call_cols))
    for row in rows:
        print(f"{row['system']:<28}" + "".join(f"{row[c]:>20.1f}" for c in call_cols))


if __name__ == "__main__":
    main()
