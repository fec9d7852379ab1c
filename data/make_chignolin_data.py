"""MD data of chignolin (``chignolin_implicit``): a training set and the 300 K reference estimates.

Two stages of Langevin MD (OpenMM ``LangevinMiddleIntegrator`` through ``bf.sample(..., sampler="md")``):

1. **training** — ``--training-chains`` trajectories at ``--training-temperature`` (400 K), started
   from the minimised hairpin, a frame every ``--training-frame-ps``: diverse, mostly unfolded
   configurations;
2. **reference** — ``--chains`` trajectories at the system temperature (300 K) of ``--ns`` each,
   a frame every ``--frame-ps``; even chains start from the minimised hairpin, odd chains from the
   last frame of a training trajectory (unfolded), so chains that have not mixed disagree visibly.

Writes, under ``--data-dir`` (default ``data/``):

* ``reference.json`` — the ``"chignolin_implicit"`` entry only (other systems are left as they
  are): ``"md"`` = :func:`boltzflow.estimate.summarize` of the reference chains — ⟨u⟩ (reduced, kT),
  ⟨d_y2w9⟩, ⟨d_ends⟩, ⟨rg⟩, the folded fraction ⟨folded⟩ (``states.folded`` of ``system.toml``),
  ΔF(folded − unfolded), with standard errors from each chain's integrated autocorrelation time,
  split R-hat per observable — plus the run settings, simulated ns/day and the number of
  folded/unfolded state changes per chain (an error bar means little without several);
* ``chignolin_implicit/samples.npz`` (+ ``.json``) — the reference frames, thinned to ~2.7 MB;
* ``chignolin_implicit/training/samples.npz`` — *not tracked by git*: every training frame and
  every ``--training-stride``-th reference frame, energies reduced at 300 K, log-weights 0 (a
  mixture for unweighted maximum-likelihood training, ``ml_weighting = "uniform"``; not for
  estimates).

Time step: flows need all degrees of freedom, so the system has no constraints. MD runs at 2 fs
with hydrogen masses raised to 3 amu (the bonded heavy atom loses as much; total mass unchanged):
masses do not enter the configurational Boltzmann distribution, and the fastest X–H vibration is
then as slow as with 1.3 fs at normal masses. ``--timestep-fs 1 --hydrogen-mass 0`` runs plain
1 fs MD with normal masses instead.

Cost (measured on this 2-core machine, one CPU-platform thread per trajectory, 147 atoms, ff14SB +
OBC2): 85-130 ns/day per trajectory at 2 fs (1 fs with normal masses: ~50 ns/day); other jobs on
the same cores slow it down. The defaults (training 2 × 1 ns at 400 K, a frame every 0.5 ps;
reference 2 × 4 ns at 300 K, a frame every 5 ps; 0.2 ns equilibration each; two trajectories at a
time) take about 80 minutes and made the shipped reference. Chignolin stays folded at 300 K in
this force field (the chain started unfolded folds within a few hundred ps), so the folded
fraction is near 1; longer runs (``--ns 25 --chains 4``) sharpen the rare unfolded excursions.

Usage::

    python data/make_chignolin_data.py                                # the shipped data, ~80 min on 2 cores
    python data/make_chignolin_data.py --ns 0.05 --training-ns 0.02 \\
        --data-dir /tmp/chignolin_short                               # a short check (minutes)

Every trajectory checkpoints under ``<data-dir>/.work/``; rerunning the same command resumes after
a kill (a finished stage is cached there until the outputs are written).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import openmm

import boltzflow as bf
from boltzflow.estimate.report import summarize
from boltzflow.io import atomic_write

HERE = Path(__file__).resolve().parent
NAME = "chignolin_implicit"
STORED_BYTES = 2.7e6  # at most about this many bytes of reference coordinates in <data-dir>/chignolin_implicit/


def heavy_hydrogens(system: openmm.System, topology, mass: float) -> openmm.System:
    """A copy of ``system`` whose hydrogens weigh ``mass`` amu, taken from their bonded heavy atom.

    Parameters
    ----------
    system : openmm.System
        The system (unchanged).
    topology : mdtraj.Topology
        Its topology (bonds, elements).
    mass : float
        Hydrogen mass in amu; ``0`` returns an unchanged copy.

    Returns
    -------
    openmm.System
        Same forces and total mass; only masses differ.
    """
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    if mass == 0:
        return copy
    for bond in topology.bonds:
        heavy, hydrogen = bond[0], bond[1]
        if heavy.element.symbol == "H":
            heavy, hydrogen = hydrogen, heavy
        if hydrogen.element.symbol != "H" or heavy.element.symbol == "H":
            continue
        shift = mass - copy.getParticleMass(hydrogen.index).value_in_unit(openmm.unit.dalton)
        copy.setParticleMass(hydrogen.index, mass)
        copy.setParticleMass(heavy.index, copy.getParticleMass(heavy.index).value_in_unit(openmm.unit.dalton) - shift)
    if any(copy.getParticleMass(i).value_in_unit(openmm.unit.dalton) <= 0 for i in range(copy.getNumParticles())):
        raise ValueError(f"hydrogen mass {mass} amu leaves a heavy atom without mass")
    return copy


def _trajectory(job: dict) -> tuple[bf.SampleSet, float]:
    """One MD trajectory (runs in a worker process); returns its frames and wall seconds."""
    start = time.perf_counter()
    system = bf.load_system(NAME)
    if job["temperature"] != system.temperature:
        system = system.at_temperature(job["temperature"])
    md_system = replace(system, openmm_system=heavy_hydrogens(system.openmm_system, system.topology, job["hydrogen_mass"]),
                        x0=system.x0 if job["start"] is None else job["start"])
    samples = bf.sample(
        md_system, sampler="md", n=job["n"], seed=job["seed"], thin=job["thin"], timestep_fs=job["timestep_fs"],
        equilibration_ps=job["equilibration_ps"], progress=job["progress"], checkpoint=job["checkpoint"],
        checkpoint_seconds=120.0,
    )
    samples.chain[:] = job["seed"]
    return samples, time.perf_counter() - start


def run_stage(stage: str, jobs: list[dict], processes: int, work: Path) -> tuple[bf.SampleSet, list[float]]:
    """Run the trajectories of one stage in parallel (or load the stage's cached result)."""
    cached = work / f"{NAME}.{stage}.done.npz"
    if cached.exists():
        samples = bf.SampleSet.load(cached)
        return samples, samples.metadata["wall_seconds_per_chain"]
    # one OpenMM CPU thread per trajectory: processes run side by side on the cores
    os.environ["OPENMM_CPU_THREADS"] = "1"
    with mp.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_trajectory, jobs, chunksize=1)
    samples = bf.SampleSet.concatenate([r[0] for r in results])
    walls = [round(r[1], 1) for r in results]
    samples.metadata.update({"wall_seconds_per_chain": walls, "temperature": jobs[0]["temperature"]})
    samples.save(cached)
    return samples, walls


def _jobs(stage: str, temperature: float, ns: float, frame_ps: float, seeds: list[int], starts: list, args,
          work: Path) -> list[dict]:
    thin = round(frame_ps * 1000.0 / args.timestep_fs)
    return [
        {"temperature": temperature, "n": round(ns * 1000.0 / frame_ps), "seed": seed, "thin": thin,
         "timestep_fs": args.timestep_fs, "hydrogen_mass": args.hydrogen_mass, "start": start,
         "equilibration_ps": args.equilibration_ps, "progress": i == 0,
         "checkpoint": work / f"{NAME}.{stage}.chain{seed}.npz"}
        for i, (seed, start) in enumerate(zip(seeds, starts))
    ]


def state_changes(samples: bf.SampleSet, state) -> dict[str, int]:
    """Per chain (time order), how many consecutive frame pairs change between ``state`` and its complement."""
    inside = state(samples.x)
    changes = {}
    for c in np.unique(samples.chain):
        rows = np.flatnonzero(samples.chain == c)
        rows = rows[np.argsort(samples.time[rows], kind="stable")]
        changes[str(int(c))] = int(np.count_nonzero(np.diff(inside[rows].astype(np.int8))))
    return changes


def ns_per_day(samples: bf.SampleSet, walls: list[float]) -> list[float]:
    """Simulated ns per wall-clock day of each chain (equilibration included; 0 for a cached stage)."""
    per_chain_ps = samples.metadata["simulated_ps"]
    return [round(per_chain_ps / 1000.0 * 86400.0 / w, 1) if w > 0 else 0.0 for w in walls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ns", type=float, default=4.0, help="ns per 300 K reference trajectory")
    parser.add_argument("--chains", type=int, default=2, help="reference trajectories (even: folded start)")
    parser.add_argument("--frame-ps", type=float, default=5.0, help="ps between stored reference frames")
    parser.add_argument("--training-ns", type=float, default=1.0, help="ns per high-temperature trajectory")
    parser.add_argument("--training-chains", type=int, default=2)
    parser.add_argument("--training-temperature", type=float, default=400.0, help="kelvin")
    parser.add_argument("--training-frame-ps", type=float, default=0.5)
    parser.add_argument("--training-stride", type=int, default=4,
                        help="every n-th reference frame also goes into the training set")
    parser.add_argument("--timestep-fs", type=float, default=2.0)
    parser.add_argument("--hydrogen-mass", type=float, default=3.0, help="amu; 0 keeps the normal masses")
    parser.add_argument("--equilibration-ps", type=float, default=200.0, help="discarded at the start of each trajectory")
    parser.add_argument("--processes", type=int, default=2, help="trajectories run at the same time")
    parser.add_argument("--data-dir", type=Path, default=HERE, help="where reference.json and the samples go")
    args = parser.parse_args()
    if min(args.ns, args.training_ns, args.frame_ps, args.training_frame_ps, args.timestep_fs) <= 0:
        raise SystemExit("--ns, --training-ns, --frame-ps, --training-frame-ps and --timestep-fs must be positive")
    if args.chains < 1 or args.training_chains < 1 or args.processes < 1 or args.training_stride < 1:
        raise SystemExit("--chains, --training-chains, --processes and --training-stride must be >= 1")
    if args.hydrogen_mass < 0:
        raise SystemExit("--hydrogen-mass must be >= 0")

    data_dir = args.data_dir.resolve()
    work = data_dir / ".work"
    system = bf.load_system(NAME)
    tag = f"{args.timestep_fs:g}fs-H{args.hydrogen_mass:g}-eq{args.equilibration_ps:g}ps"  # names cached stages
    start = time.time()

    # 1. high temperature: training frames, unfolded starts for half of the reference chains
    t_high = args.training_temperature
    seeds = [100 + k for k in range(args.training_chains)]
    stage = f"training-{args.training_chains}x{args.training_ns:g}ns-{t_high:g}K-{args.training_frame_ps:g}ps-{tag}"
    hot, hot_walls = run_stage(
        stage, _jobs(stage, t_high, args.training_ns, args.training_frame_ps, seeds, [None] * len(seeds), args, work),
        args.processes, work,
    )
    hot_last = [hot.x[np.flatnonzero(hot.chain == s)[-1]] for s in seeds]
    print(f"training: {len(hot)} frames at {t_high:g} K; ns/day per chain {ns_per_day(hot, hot_walls)}")

    # 2. reference at the system temperature
    seeds = list(range(args.chains))
    starts = [None if k % 2 == 0 else hot_last[(k // 2) % len(hot_last)] for k in seeds]
    stage = f"reference-{args.chains}x{args.ns:g}ns-{system.temperature:g}K-{args.frame_ps:g}ps-{tag}-from-{stage}"
    reference, walls = run_stage(
        stage, _jobs(stage, system.temperature, args.ns, args.frame_ps, seeds, starts, args, work),
        args.processes, work,
    )
    folded = system.states["folded"]
    observables = {**system.observables, "folded": lambda x: folded(x).astype(np.float64)}
    entry = {"md": summarize(reference, observables=observables, states=(system.states["A"], system.states["B"]))}
    entry["md"].update({
        "sampler": "md",
        "wall_seconds": round(time.time() - start, 1),
        "ns_per_day_per_chain": ns_per_day(reference, walls),
        "state_changes_per_chain": state_changes(reference, folded),
        "run": {
            "n_chains": args.chains, "ns_per_chain": args.ns, "frame_ps": args.frame_ps,
            "equilibration_ps": args.equilibration_ps, "timestep_fs": args.timestep_fs,
            "hydrogen_mass_amu": args.hydrogen_mass, "temperature": system.temperature,
            "starts": f"even chains: minimised hairpin; odd chains: last frame of a {t_high:g} K trajectory",
        },
    })
    print(f"reference: {len(reference)} frames at {system.temperature:g} K; ns/day per chain "
          f"{entry['md']['ns_per_day_per_chain']}; state changes per chain {entry['md']['state_changes_per_chain']}")
    print(bf.estimate.format_table(entry["md"]))

    # outputs: reference.json (this system's entry only), reference samples, training mixture
    ref_path = data_dir / "reference.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    all_entries = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    all_entries[NAME] = entry
    text = json.dumps(all_entries, indent=1, sort_keys=True)
    atomic_write(ref_path, lambda f: f.write(text.encode()))

    reference.metadata.update({"system_source": None, "n_chains": args.chains, "ns_per_chain": args.ns,
                               "hydrogen_mass_amu": args.hydrogen_mass})
    keep = min(len(reference), int(STORED_BYTES / (8 * reference.dim)))
    reference[:: -(-len(reference) // keep)].save(data_dir / NAME)

    hot_300 = bf.SampleSet(
        x=hot.x, energies=system.energy.evaluate(hot.x, need_gradient=False).energy, chain=hot.chain, time=hot.time,
        metadata=hot.metadata,
    )
    training = bf.SampleSet.concatenate([hot_300, reference[:: args.training_stride]])
    training.metadata = {
        "system": NAME, "system_source": None, "temperature": system.temperature, "sampler": "md",
        "correlated": True, "normalized_proposal": False,
        "n_failed": training.n_failed,
        "purpose": "maximum-likelihood training mixture", "ml_weighting": "uniform",
        "timestep_fs": args.timestep_fs, "hydrogen_mass_amu": args.hydrogen_mass,
        "chain_temperatures": {**{str(s): t_high for s in np.unique(hot.chain).tolist()},
                               **{str(s): system.temperature for s in seeds}},
        "energies": f"reduced at {system.temperature:g} K for every frame",
        "training_frame_ps": args.training_frame_ps, "training_ns_per_chain": args.training_ns,
        "reference_stride": args.training_stride,
    }
    out = training.save(data_dir / NAME / "training")
    fraction = float(np.mean(folded(training.x)))
    print(f"wrote {ref_path} ({NAME} entry), {data_dir / NAME / 'samples.npz'}, {out}: {len(training)} training "
          f"frames, {fraction:.1%} folded")
    for ckpt in work.glob(f"{NAME}.*"):
        ckpt.unlink()


if __name__ == "__main__":
    main()
