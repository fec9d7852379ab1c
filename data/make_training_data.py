"""Generate maximum-likelihood training data for the alanine dipeptide flows (plain + umbrella MD).

Writes ``data/<system>/training/samples.npz`` (+ ``.json``), a :class:`~boltzflow.SampleSet` of

* plain Langevin MD frames (the φ < 0 basins, where almost all of the Boltzmann mass is), and
* frames of MD under the reference umbrella bias on φ (``data/<system>/samples.npz`` metadata), so
  that the flow also puts some mass on φ > 0 (αL / C7ax) — otherwise reweighting cannot correct it.

The frames keep their honest importance weights (0 for plain MD, ``V(φ)/kT`` for umbrella frames),
but the set is a *mixture* meant for unweighted maximum likelihood
(its metadata says ``ml_weighting = "uniform"``, which ``boltzflow train`` follows): the flow
then over-covers φ > 0 a little, which costs some ESS and makes the reweighted ΔF(φ>0 − φ<0)
well determined.

Usage::

    python data/make_training_data.py                       # implicit solvent, ~9 min on 2 cores
    python data/make_training_data.py --system alanine_dipeptide_vacuum

Each trajectory checkpoints under ``data/.work/``; rerunning resumes. The output (60 000 frames,
~32 MB) is not tracked by git: it is regenerated from the fixed seeds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path

import numpy as np

import boltzflow as bf

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
FRAME_PS = 0.2


def _trajectory(args: tuple[str, str, float, int, list[float] | None]) -> bf.SampleSet:
    name, sampler, ns, seed, bias = args
    options = {} if bias is None else {"bias_kj": bias}
    samples = bf.sample(
        bf.load_system(name), sampler=sampler, n=int(round(ns * 1000 / FRAME_PS)), seed=seed,
        thin=int(FRAME_PS * 1000), equilibration_ps=50.0, progress=seed % 2 == 0,
        checkpoint=WORK / f"{name}.training.{sampler}.{seed}.npz", checkpoint_seconds=60.0, **options,
    )
    samples.chain[:] = seed
    return samples


def make_training_data(name: str, md_ns: float, umbrella_ns: float, n_processes: int = 2) -> bf.SampleSet:
    """Two plain-MD and two umbrella-MD trajectories of ``system`` (ns each), concatenated.

    Parameters
    ----------
    name : str
        A built-in alanine dipeptide system with reference samples in ``data/<name>/``.
    md_ns, umbrella_ns : float
        Simulated time of each plain and each umbrella trajectory.
    n_processes : int
        Trajectories run in parallel.

    Returns
    -------
    SampleSet
        Chains 0, 1: plain MD; chains 2, 3: umbrella MD (log-weights ``V/kT``).
    """
    reference = bf.SampleSet.load(HERE / name)
    bias = reference.metadata.get("bias_kj_per_mol")
    if bias is None:
        raise SystemExit(f"data/{name} holds no umbrella bias: run data/make_reference.py --only {name} first")
    jobs = [(name, "md", md_ns, 0, None), (name, "md", md_ns, 1, None),
            (name, "umbrella", umbrella_ns, 2, bias), (name, "umbrella", umbrella_ns, 3, bias)]
    with mp.get_context("spawn").Pool(n_processes) as pool:
        parts = pool.map(_trajectory, jobs)
    data = bf.SampleSet.concatenate(parts)
    data.metadata.update({
        "sampler": "md+umbrella", "purpose": "maximum-likelihood training mixture", "ml_weighting": "uniform",
        "md_ns_per_chain": md_ns,
        "umbrella_ns_per_chain": umbrella_ns, "frame_ps": FRAME_PS, "system_source": None,
    })
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="alanine_dipeptide_implicit")
    parser.add_argument("--md-ns", type=float, default=5.0, help="ns per plain-MD trajectory (2 of them)")
    parser.add_argument("--umbrella-ns", type=float, default=1.0, help="ns per umbrella trajectory (2 of them)")
    args = parser.parse_args()
    data = make_training_data(args.system, args.md_ns, args.umbrella_ns)
    out = data.save(HERE / args.system / "training")
    phi = bf.load_system(args.system).observables["phi"](data.x)
    print(f"{out}: {len(data)} frames, {np.mean(phi > 0):.1%} with φ > 0")
    for ckpt in WORK.glob(f"{args.system}.training.*"):
        ckpt.unlink()


if __name__ == "__main__":
    main()
