"""Generate the project's reference data with the MD/MCMC baseline (and quadrature where exact).

Writes, under ``data/``:

* ``<system>/samples.npz`` (+ ``.json``) — reference samples of each built-in system: long MALA
  runs for the numba systems; for alanine dipeptide, umbrella MD (a static bias on φ learnt by
  metadynamics, exact importance weights) in independent trajectories, one per process;
* ``reference.json`` — per system, the estimates with uncertainties (mean reduced energy,
  observables, ΔF between the system's states A and B) of each method run: ``"md"`` (plain MD or
  MALA: the baseline flows are compared with), ``"umbrella"`` (alanine dipeptide: the reference
  ΔF, since plain MD at 300 K almost never visits φ > 0), ``"exact"`` (quadrature, double well),
  and a weighted φ/ψ histogram (``"ramachandran"``) for KL comparisons.

Usage::

    python data/make_reference.py                      # everything (about an hour on 2 cores)
    python data/make_reference.py --only double_well_2d lj13

Runs checkpoint under ``data/.work/``; rerunning the same command resumes after a kill.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from scipy import integrate, special

import boltzflow as bf
from boltzflow.estimate.report import summarize
from boltzflow.io import atomic_write
from boltzflow.samplers.umbrella import dihedral_atoms, metadynamics_bias
from boltzflow.systems.observables import PairDistances

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"

# simulated time per trajectory (ns): plain MD and umbrella MD, for the OpenMM systems
MD_PLAN = {"alanine_dipeptide_implicit": 15.0, "alanine_dipeptide_vacuum": 25.0}
UMBRELLA_PLAN = {"alanine_dipeptide_implicit": 10.0, "alanine_dipeptide_vacuum": 10.0}
MD_FRAME_PS = 5.0
METADYNAMICS_NS = 2.0
STORED_SAMPLES = 4000  # at most this many samples kept in data/<system>/ (estimates use all of them)
STORED_BYTES = 2.7e6  # and at most about this many bytes of coordinates
# MALA plan for the numba systems: (samples, chains, thin, warmup)
MALA_PLAN = {
    "double_well_2d": (20_000, 64, 50, 5_000),
    "dw4": (400_000, 64, 50, 5_000),  # long: its pair-distance profile is a reference for flows
    "lj13": (20_000, 64, 50, 10_000),
    "lj55": (10_000, 64, 50, 10_000),
}


def _md_chain(args: tuple[str, str, float, int, list[float] | None]) -> bf.SampleSet:
    name, sampler, ns, seed, bias = args
    system = bf.load_system(name)
    options = {} if sampler == "md" else {"bias_kj": bias}
    samples = bf.sample(
        system, sampler=sampler, n=int(ns * 1000 / MD_FRAME_PS), seed=seed, thin=int(MD_FRAME_PS * 1000),
        equilibration_ps=100.0, progress=seed == 0, checkpoint=WORK / f"{name}.{sampler}.chain{seed}.npz",
        checkpoint_seconds=120.0, **options,
    )
    samples.chain[:] = seed
    return samples


def run_md(name: str, sampler: str, ns: float, n_chains: int) -> bf.SampleSet:
    """Independent trajectories of ``ns`` each, one process per trajectory.

    For umbrella MD the bias is learnt once (metadynamics) and shared by all trajectories.
    """
    bias = None
    if sampler == "umbrella":
        system = bf.load_system(name)
        bias_file = WORK / f"{name}.bias.npy"
        if not bias_file.exists():
            bias = metadynamics_bias(system, dihedral_atoms(system, "phi"), ns=METADYNAMICS_NS)
            WORK.mkdir(parents=True, exist_ok=True)
            np.save(bias_file, bias)
        bias = np.load(bias_file).tolist()
    with mp.get_context("spawn").Pool(n_chains) as pool:
        parts = pool.map(_md_chain, [(name, sampler, ns, seed, bias) for seed in range(n_chains)])
    samples = bf.SampleSet.concatenate(parts)
    samples.metadata.update({"n_chains": n_chains, "ns_per_chain": ns})
    return samples


def run_mala(name: str) -> bf.SampleSet:
    n, chains, thin, warmup = MALA_PLAN[name]
    return bf.sample(bf.load_system(name), sampler="mala", n=n, seed=0, n_chains=chains, thin=thin,
                     warmup=warmup, checkpoint=WORK / f"{name}.npz")


def double_well_exact() -> dict[str, float]:
    """log Z, <u>, <x1>, P(x1 > 0) and ΔF(B−A) of double_well_2d by quadrature (x2 is Gaussian)."""
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
        "mean_energy": quad(u1, -8, 8) / z + 0.5,  # <u1(x1)> + <x2^2/2>
        "log_z": float(np.log(z) - shift + 0.5 * np.log(2 * np.pi)),
        "mean_x1": quad(lambda x: x, -8, 8) / z,
        "p_b": z_right / z,
        "delta_f_b_minus_a": float(-np.log(z_right / z_left)),
    }


def tetrahedron_field_exact(n_polar: int = 256, n_azimuth: int = 512) -> dict[str, float]:
    """Exact orientational averages of tetrahedron_field by quadrature over SO(3) with the Haar measure.

    The energy depends on the orientation R only through the body-frame field direction
    ``n = Rᵀ ŷ``, and the Haar measure pushes forward to the uniform measure on the sphere of ``n``,
    so ``⟨f⟩_Haar = (1/4π) ∫_{S²} f(n) dn``: Gauss–Legendre in ``cos θ`` × the trapezoidal rule in
    ``φ`` (exponentially convergent for this smooth periodic integrand), each node evaluated through
    the system's own energy at a rigid configuration with ``R n = ŷ``. Returns ``log_z`` in the
    convention of the rigid-body flows (S³ surface measure, ``log Z = log 2π² + log ⟨e^{-u}⟩_Haar``),
    also ``log_z_haar``, ``mean_energy``, the mode weights ``p_up0 … p_up3`` (vertex i highest),
    ``mean_y0`` and ``delta_f_b_minus_a`` for the system's states (A: vertex 0 up, B: vertex 1 up).
    """
    from boltzflow.energy.tetrahedron_field import vertex_up, vertex_up_rotation

    system = bf.load_system("tetrahedron_field")
    cos_theta, w_theta = np.polynomial.legendre.leggauss(n_polar)
    phi = 2 * np.pi * np.arange(n_azimuth) / n_azimuth
    sin_theta = np.sqrt(1 - cos_theta**2)
    n = np.stack([np.outer(sin_theta, np.cos(phi)), np.outer(sin_theta, np.sin(phi)),
                  np.outer(cos_theta, np.ones(n_azimuth))], axis=-1).reshape(-1, 3)
    weights = (np.outer(w_theta, np.full(n_azimuth, 2 * np.pi / n_azimuth)) / (4 * np.pi)).reshape(-1)
    reference = system.rigid_bodies.reference
    x = np.einsum("nab,kb->nka", vertex_up_rotation(n), reference).reshape(len(n), -1)
    u = system.energy.evaluate(x, need_gradient=False).energy
    shift = u.min()
    p = weights * np.exp(-(u - shift))
    z = p.sum()
    modes = {f"p_up{i}": float((p * vertex_up(x, i)).sum() / z) for i in range(4)}
    log_z_haar = float(np.log(z) - shift)
    return {
        "log_z": log_z_haar + float(np.log(2 * np.pi**2)),
        "log_z_haar": log_z_haar,
        "mean_energy": float((p * u).sum() / z),
        "mean_y0": float((p * x[:, 1]).sum() / z),
        **modes,
        "delta_f_b_minus_a": float(-np.log(modes["p_up1"] / modes["p_up0"])),
        "quadrature": f"Gauss-Legendre {n_polar} x trapezoid {n_azimuth} over the field direction",
    }


EXACT_ONLY = {"tetrahedron_field": tetrahedron_field_exact}  # reference by quadrature alone, no sampling


def gaussian_mixture_exact(name: str) -> dict[str, float]:
    """Exact log Z, ⟨u⟩, ⟨x0⟩, P(A), P(B) and ΔF(B−A) of a ``gaussian_mixture`` system (gmm10, gmm1000).

    The mixture is normalised (``log Z = 0`` at kT = 1); state A is ``x0 < 0``, whose probability is
    a sum of normal CDFs. With equal widths σ and means along ``x0`` only,
    ``u = r⊥²/2σ² + ((d−1)/2) log 2πσ² + u1(x0)``, so ``⟨u⟩ = ((d−1)/2)(1 + log 2πσ²) + ⟨u1⟩``
    with ``⟨u1⟩`` by 1D quadrature.
    """
    system = bf.load_system(name)
    energy = system.energy
    if {k: s.expression.replace(" ", "") for k, s in system.states.items()} != {"A": "x0<0", "B": "x0>0"}:
        raise ValueError(f"{name}: the exact reference assumes states A = 'x0 < 0', B = 'x0 > 0'")
    sigma = energy.sigmas[0]
    if not (np.allclose(energy.sigmas, sigma) and np.allclose(energy.means[:, 1:], 0.0) and energy.kT == 1.0):
        raise ValueError(f"{name}: exact <u> by 1D quadrature needs equal sigmas, means along x0 and kT = 1")
    w, m, d = energy.weights, energy.means[:, 0], energy.dim

    def p1(x0: float) -> float:  # the x0 marginal
        return float(w @ np.exp(-0.5 * ((x0 - m) / sigma) ** 2)) / np.sqrt(2 * np.pi * sigma**2)

    lo, hi = m.min() - 12 * sigma, m.max() + 12 * sigma
    mean_u1 = integrate.quad(lambda x: -p1(x) * np.log(p1(x)), lo, hi, points=list(m), limit=200, epsabs=0,
                             epsrel=1e-12)[0]
    p_a = energy.coordinate_cdf(0, 0.0)
    return {
        "log_z": 0.0,
        "mean_energy": float(0.5 * (d - 1) * (1 + np.log(2 * np.pi * sigma**2)) + mean_u1),
        "mean_x0": float(w @ m),
        "p_a": p_a,
        "p_b": 1.0 - p_a,
        "delta_f_b_minus_a": float(-np.log((1.0 - p_a) / p_a)),
    }


def four_wells_exact() -> dict[str, float]:
    """Exact log Z, ⟨u⟩, ⟨a⟩, ⟨b⟩, P(A), P(B) and ΔF(B−A) of ``four_wells_2d`` by 1D quadrature.

    ``u = v(a) + 2 (b − c(a))²`` with ``c(a) = 0.4 sin 1.5a``: given ``a``, ``b`` is normal with
    mean ``c(a)`` and variance 1/4, so ``Z = √(π/2) ∫ e^{−v}``, ``⟨u⟩ = ⟨v⟩ + 1/2``, ``⟨b⟩ = ⟨c(a)⟩``.
    """
    system = bf.load_system("four_wells_2d")
    if {k: s.expression.replace(" ", "") for k, s in system.states.items()} != {"A": "a<-1.5", "B": "a>1.5"}:
        raise ValueError("four_wells_2d: the exact reference assumes states A = 'a < -1.5', B = 'a > 1.5'")

    def v(a: float) -> float:
        return 0.75 * (a**2 - 1.0) ** 2 * (a**2 - 4.0) ** 2 + 0.6 * a

    def quad(f, lo: float = -3.5, hi: float = 3.5) -> float:
        return integrate.quad(lambda a: f(a) * np.exp(-v(a)), lo, hi, points=[-2, -1, 1, 2], limit=400,
                              epsabs=0, epsrel=1e-12)[0]

    z1 = quad(lambda a: 1.0)
    p_a, p_b = quad(lambda a: 1.0, -3.5, -1.5) / z1, quad(lambda a: 1.0, 1.5, 3.5) / z1
    return {
        "log_z": float(np.log(z1) + 0.5 * np.log(np.pi / 2)),
        "mean_energy": float(quad(v) / z1 + 0.5),
        "mean_a": float(quad(lambda a: a) / z1),
        "mean_b": float(quad(lambda a: 0.4 * np.sin(1.5 * a)) / z1),
        "p_a": float(p_a),
        "p_b": float(p_b),
        "delta_f_b_minus_a": float(-np.log(p_b / p_a)),
    }


def _system_module(system: bf.System) -> ModuleType:
    """The ``system.py`` module of a ``type = "python"`` system folder (its exact constants and answers)."""
    spec = importlib.util.spec_from_file_location(f"reference_{system.name}", Path(system.source) / "system.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torsion_exact() -> dict[str, float]:
    """Exact P(A), P(B), ΔF(B−A), ⟨φ⟩ and ⟨u⟩ of ``torsion_4atom`` (1D quadratures in its module; no log Z:
    the chain's centre of mass and orientation are free)."""
    system = bf.load_system("torsion_4atom")
    return _system_module(system).exact_answers(system.temperature)


def correlated_gaussian_exact() -> dict[str, float]:
    """Exact log Z, ⟨u⟩, ⟨x0⟩, ⟨x9⟩, P(A), P(B) and ΔF(B−A) of ``gaussian_10d_correlated`` (closed form)."""
    system = bf.load_system("gaussian_10d_correlated")
    if {k: s.expression.replace(" ", "") for k, s in system.states.items()} != {"A": "x9<0", "B": "x9>0"}:
        raise ValueError("gaussian_10d_correlated: the exact reference assumes states A = 'x9 < 0', B = 'x9 > 0'")
    module = _system_module(system)
    cov, mean = module.COVARIANCE, module.MEAN
    dim = mean.size
    p_a = float(special.ndtr(-mean[9] / np.sqrt(cov[9, 9])))
    return {
        "log_z": float(0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]),
        "mean_energy": 0.5 * dim,
        "mean_x0": float(mean[0]),
        "mean_x9": float(mean[9]),
        "p_a": p_a,
        "p_b": 1.0 - p_a,
        "delta_f_b_minus_a": float(-np.log((1.0 - p_a) / p_a)),
    }


EXACT_ONLY.update(gmm10=lambda: gaussian_mixture_exact("gmm10"), gmm1000=lambda: gaussian_mixture_exact("gmm1000"),
                  four_wells_2d=four_wells_exact, gaussian_10d_correlated=correlated_gaussian_exact,
                  torsion_4atom=torsion_exact)


X1_EDGES = np.linspace(-2.5, 2.5, 51)  # double_well_2d: profile along x1
PAIR_EDGES = np.linspace(1.5, 6.5, 51)  # dw4: pooled pair-distance profile


def double_well_profile() -> dict[str, list]:
    """Exact F(x1) (kT, minimum 0) of double_well_2d on ``X1_EDGES``: -ln of each bin's probability / width."""
    energy = bf.load_system("double_well_2d").energy

    def density(x1: float) -> float:
        return float(np.exp(-energy.evaluate(np.array([[x1, 0.0]]), need_gradient=False).energy[0]))

    mass = np.array([integrate.quad(density, lo, hi, epsabs=0, epsrel=1e-12)[0]
                     for lo, hi in zip(X1_EDGES[:-1], X1_EDGES[1:])])
    free = -np.log(mass / np.diff(X1_EDGES))
    return {"edges": X1_EDGES.tolist(), "free_energy_kT": (free - free.min()).tolist(), "error_kT": [0.0] * len(free)}


def sampled_profile(samples: bf.SampleSet, f, edges: np.ndarray) -> dict[str, list]:
    """Reweighted F(s) (kT, minimum 0) with 1σ errors; ``None`` for empty bins."""
    profile = bf.estimate.free_energy_profile(samples, f, edges)

    def clean(values: np.ndarray) -> list:
        return [float(v) if np.isfinite(v) else None for v in values]

    return {"edges": edges.tolist(), "free_energy_kT": clean(profile.free_energy), "error_kT": clean(profile.error)}


def ramachandran(samples: bf.SampleSet, system: bf.System, bins: int = 36) -> dict[str, list]:
    """Weighted, normalised φ/ψ histogram (probabilities), for KL comparisons of later samplers."""
    weights = np.exp(samples.log_weights - samples.log_weights.max())
    hist, edges, _ = np.histogram2d(
        system.observables["phi"](samples.x), system.observables["psi"](samples.x),
        bins=bins, range=[[-np.pi, np.pi]] * 2, weights=weights,
    )
    return {"bins": bins, "edges": edges.tolist(), "probability": (hist / hist.sum()).tolist()}


def phi_profile(samples: bf.SampleSet, system: bf.System, bins: int = 36) -> dict[str, list]:
    """Free-energy profile F(φ) in kT (minimum 0) with 1σ errors, from weighted bin populations."""
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    phi = system.observables["phi"]
    populations = [
        bf.estimate.expectation(samples, lambda x, lo=lo, hi=hi: ((phi(x) >= lo) & (phi(x) < hi)).astype(float))
        for lo, hi in zip(edges[:-1], edges[1:])
    ]
    p = np.array([e.value for e in populations])
    dp = np.array([e.error for e in populations])
    with np.errstate(divide="ignore", invalid="ignore"):
        free = -np.log(p)
        error = dp / p
    free -= np.nanmin(free[np.isfinite(free)])
    return {
        "centres": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "free_energy_kT": [float(f) if np.isfinite(f) else None for f in free],
        "error_kT": [float(e) if np.isfinite(e) else None for e in error],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="systems to (re)generate; default all")
    parser.add_argument("--chains", type=int, default=2, help="parallel MD trajectories per OpenMM system")
    args = parser.parse_args()
    names = args.only or [*MALA_PLAN, *MD_PLAN, *EXACT_ONLY]
    ref_path = HERE / "reference.json"
    reference = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    for name in names:
        if name in EXACT_ONLY:
            reference[name] = {"exact": EXACT_ONLY[name]()}
            text = json.dumps(reference, indent=1, sort_keys=True)
            atomic_write(ref_path, lambda f: f.write(text.encode()))
            print(f"{name}: exact reference {reference[name]['exact']}")
            continue
        if name not in MALA_PLAN and name not in MD_PLAN:
            raise SystemExit(f"unknown system '{name}'")
        system = bf.load_system(name)
        states = (system.states["A"], system.states["B"]) if {"A", "B"} <= set(system.states) else None
        entry: dict = {}
        runs = [("md", None)] if name in MALA_PLAN else [("md", MD_PLAN[name]), ("umbrella", UMBRELLA_PLAN[name])]
        for sampler, ns in runs:
            start = time.time()
            cached = WORK / f"{name}.{sampler}.done.npz"
            if cached.exists():  # a finished stage of an interrupted run
                samples = bf.SampleSet.load(cached)
            else:
                samples = run_mala(name) if ns is None else run_md(name, sampler, ns, args.chains)
                samples.save(cached)
            entry[sampler] = summarize(samples, observables=system.observables, states=states)
            entry[sampler]["sampler"] = samples.metadata["sampler"]
            entry[sampler]["wall_seconds"] = round(time.time() - start, 1)
            print(f"{name} {sampler}: {len(samples)} samples in {entry[sampler]['wall_seconds']} s")
        # the last run is the reference: MALA for the numba systems, umbrella MD for alanine
        samples.metadata["system_source"] = None  # the built-in name is the reference, not a path
        keep = min(STORED_SAMPLES, int(STORED_BYTES / (8 * samples.dim)))
        stride = -(-len(samples) // keep)
        samples[::stride].save(HERE / name)
        if name == "double_well_2d":
            # MALA chains rarely cross the ~9 kT barrier: the exact numbers are the reference here.
            entry["exact"] = double_well_exact()
            entry["x1_profile"] = double_well_profile()
        if name == "dw4":
            entry["pair_distance_profile"] = sampled_profile(samples, PairDistances(2), PAIR_EDGES)
        if "phi" in system.observables and "psi" in system.observables:
            entry["ramachandran"] = ramachandran(samples, system)
            entry["phi_profile"] = phi_profile(samples, system)
        reference[name] = entry
        text = json.dumps(reference, indent=1, sort_keys=True)
        atomic_write(ref_path, lambda f: f.write(text.encode()))
        for ckpt in WORK.glob(f"{name}*"):
            ckpt.unlink()


if __name__ == "__main__":
    main()
