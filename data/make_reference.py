"""Generate the project's reference data with the MD/MCMC baseline (and quadrature where exact).

Writes, under ``data/``:

* ``<system>/samples.npz`` (+ ``.json``) — baseline samples of each built-in system: independent
  OpenMM Langevin trajectories for alanine dipeptide (one per process), long MALA runs for the
  numba systems;
* ``reference.json`` — reference estimates with uncertainties (mean reduced energy, observables,
  ΔF between the system's states A and B, φ/ψ histograms for alanine dipeptide), plus exact
  quadrature values for ``double_well_2d``.

Usage::

    python data/make_reference.py                      # everything (about 30 min on 2 cores)
    python data/make_reference.py --only double_well_2d lj13

Runs checkpoint under ``data/.work/``; rerunning the same command resumes after a kill.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
from scipy import integrate

import boltzflow as bf
from boltzflow.estimate.report import summarize
from boltzflow.io import atomic_write

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"

# simulated time per trajectory (ns) and number of parallel trajectories for the OpenMM systems
MD_PLAN = {"alanine_dipeptide_implicit": 15.0, "alanine_dipeptide_vacuum": 25.0}
MD_FRAME_PS = 5.0
# MALA plan for the numba systems: (samples, chains, thin, warmup)
MALA_PLAN = {
    "double_well_2d": (20_000, 64, 50, 5_000),
    "dw4": (20_000, 64, 50, 5_000),
    "lj13": (20_000, 64, 50, 10_000),
    "lj55": (10_000, 64, 50, 10_000),
}


def _md_chain(args: tuple[str, float, int]) -> bf.SampleSet:
    name, ns, seed = args
    system = bf.load_system(name)
    thin = int(MD_FRAME_PS * 1000)  # 1 fs steps
    samples = bf.sample(
        system, sampler="md", n=int(ns * 1000 / MD_FRAME_PS), seed=seed, thin=thin, equilibration_ps=100.0,
        progress=seed == 0, checkpoint=WORK / f"{name}.chain{seed}.npz", checkpoint_seconds=120.0,
    )
    samples.chain[:] = seed
    return samples


def run_md(name: str, ns: float, n_chains: int) -> bf.SampleSet:
    """Independent MD trajectories of ``ns`` each, one process per trajectory."""
    with mp.get_context("spawn").Pool(n_chains) as pool:
        parts = pool.map(_md_chain, [(name, ns, seed) for seed in range(n_chains)])
    samples = bf.SampleSet.concatenate(parts)
    samples.metadata.update({"n_chains": n_chains, "ns_per_chain": ns})
    return samples


def run_mala(name: str) -> bf.SampleSet:
    n, chains, thin, warmup = MALA_PLAN[name]
    return bf.sample(bf.load_system(name), sampler="mala", n=n, seed=0, n_chains=chains, thin=thin,
                     warmup=warmup, checkpoint=WORK / f"{name}.npz")


def double_well_exact() -> dict[str, float]:
    """log Z, <x1>, P(x1 > 0) and ΔF(B−A) of double_well_2d by quadrature (x2 is Gaussian)."""
    system = bf.load_system("double_well_2d")
    energy = system.energy

    def u1(x1: float) -> float:
        return float(energy.evaluate(np.array([[x1, 0.0]]), need_gradient=False).energy[0])

    shift = min(u1(x) for x in np.linspace(-4, 4, 801))

    def quad(f, lo: float, hi: float) -> float:
        return integrate.quad(lambda x: f(x) * np.exp(-(u1(x) - shift)), lo, hi, limit=200, epsabs=0, epsrel=1e-12)[0]

    z_left, z_right = quad(lambda x: 1.0, -8, 0), quad(lambda x: 1.0, 0, 8)
    z = z_left + z_right
    return {
        "log_z": float(np.log(z) - shift + 0.5 * np.log(2 * np.pi)),
        "mean_x1": quad(lambda x: x, -8, 8) / z,
        "p_b": z_right / z,
        "delta_f_b_minus_a": float(-np.log(z_right / z_left)),
    }


def ramachandran(samples: bf.SampleSet, system: bf.System, bins: int = 36) -> dict[str, list]:
    """Normalised φ/ψ histogram (probabilities), for KL comparisons of later samplers."""
    hist, edges, _ = np.histogram2d(
        system.observables["phi"](samples.x), system.observables["psi"](samples.x),
        bins=bins, range=[[-np.pi, np.pi]] * 2,
    )
    return {"bins": bins, "edges": edges.tolist(), "probability": (hist / hist.sum()).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="systems to (re)generate; default all")
    parser.add_argument("--chains", type=int, default=2, help="parallel MD trajectories per OpenMM system")
    args = parser.parse_args()
    names = args.only or [*MALA_PLAN, *MD_PLAN]
    ref_path = HERE / "reference.json"
    reference = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    for name in names:
        start = time.time()
        if name in MD_PLAN:
            samples = run_md(name, MD_PLAN[name], args.chains)
        elif name in MALA_PLAN:
            samples = run_mala(name)
        else:
            raise SystemExit(f"unknown system '{name}'")
        system = bf.load_system(name)
        samples.metadata["system_source"] = None  # the built-in name is the reference, not a path
        samples.save(HERE / name)
        states = (system.states["A"], system.states["B"]) if {"A", "B"} <= set(system.states) else None
        entry = {"baseline": summarize(samples, observables=system.observables, states=states)}
        entry["wall_seconds"] = round(time.time() - start, 1)
        entry["sampler"] = samples.metadata["sampler"]
        if name == "double_well_2d":
            # MALA chains rarely cross the ~9 kT barrier: the exact numbers are the reference here.
            entry["exact"] = double_well_exact()
        if "phi" in system.observables and "psi" in system.observables:
            entry["ramachandran"] = ramachandran(samples, system)
        reference[name] = entry
        text = json.dumps(reference, indent=1, sort_keys=True)
        atomic_write(ref_path, lambda f: f.write(text.encode()))
        for ckpt in WORK.glob(f"{name}*.npz"):
            ckpt.unlink()
        print(f"{name}: {len(samples)} samples in {entry['wall_seconds']} s")


if __name__ == "__main__":
    main()
