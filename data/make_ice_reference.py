"""MD samples and the MBAR reference ΔF(250 K → 100 K) of rigid TIP4P/Ew ice XI (``ice_xi_tip4p``).

For each of K temperatures geometrically spaced from 250 K down to 100 K: start from the system's
minimised lattice, NVT Langevin MD (``LangevinMiddleIntegrator``, 2 fs, friction 10/ps, rigid
water by SETTLE, CPU platform, 1 thread), equilibrate, then record frames (sites O, H1, H2, M of
every molecule, molecules whole, each shifted by box vectors so its O lies in the box) and their
potential energies (kJ/mol). The statistical inefficiency g of the energy series is measured with
``pymbar.timeseries`` and every series is subsampled by g for MBAR, with reduced potentials
``u_kn = U_n / (k_B T_k)``. MBAR gives ``Δf = f(100 K) − f(250 K)`` (reduced, f = −ln Z) with its
error and the overlap matrix (the smallest neighbouring overlap is printed and stored).

Writes

* ``data/<system>/md_250K.npz`` — all 250 K frames, float32 ``sites (n_frames, N*4*3)`` in the
  system's coordinate order, ``energies`` (kJ/mol, float64), ``stride_steps``, ``g`` (statistical
  inefficiency in frames), ``decorrelated`` (indices of the subsample used by MBAR), ``box``;
* ``data/<system>/md_250K_small.npz`` — the first 1250 frames (< 1 MB, for tests), same keys;
* ``data/reference.json["<system>"]["mbar"]`` (other keys and systems are kept).

Usage::

    python data/make_ice_reference.py            # N = 16 (about 40 min of MD on one core of a 2-core VM)
    python data/make_ice_reference.py --quick    # smoke run into data/.work/ (nothing else written)
    python data/make_ice_reference.py --n 128 --quick

Per-temperature runs checkpoint under ``data/.work/<system>/``; rerunning resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

import openmm  # noqa: E402
import openmm.unit as unit  # noqa: E402
from tqdm import tqdm  # noqa: E402

import boltzflow as bf  # noqa: E402
from boltzflow.io import atomic_write  # noqa: E402

logging.getLogger("pymbar").setLevel(logging.ERROR)

HERE = Path(__file__).resolve().parent
K_B = 0.0083144626  # kJ/mol/K
TIMESTEP_PS = 0.002
FRICTION_PER_PS = 10.0  # 1/ps gave statistical inefficiencies of 1-3 ps; 10/ps decorrelates the energy faster
SMALL_FRAMES = 1250  # 1250 x 192 float32 = 0.96 MB (2000 frames would be 1.5 MB; float32 sites barely compress)

SETTINGS = {
    # n_temperatures, frames at the first (250 K) and at the other temperatures, stride (steps), equilibration (steps)
    "full": dict(n_temperatures=11, frames_first=10000, frames_other=3000, stride=50, equilibration=5000, chunk=500),
    "quick": dict(n_temperatures=11, frames_first=40, frames_other=20, stride=10, equilibration=100, chunk=20),
}


def temperatures(n: int, t_high: float = 250.0, t_low: float = 100.0) -> np.ndarray:
    """``n`` temperatures geometrically spaced from ``t_high`` down to ``t_low``."""
    return t_high * (t_low / t_high) ** (np.arange(n) / (n - 1))


def save_npz(path: Path, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def whole_molecules(positions: np.ndarray, box: np.ndarray, n: int) -> np.ndarray:
    """Shift each molecule (O, H1, H2, M) by box vectors so its O lies in ``[0, L)``; sites ``(n, 4, 3)``."""
    sites = positions.reshape(n, 4, 3)
    shift = np.floor(sites[:, :1, :] / box) * box
    return sites - shift


def run_temperature(system: bf.System, temperature: float, n_frames: int, settings: dict, work: Path,
                    seed: int) -> dict[str, np.ndarray]:
    """Frames and energies at one temperature (resumable through ``work``).

    A finished run with fewer than ``n_frames`` frames is extended: from its final state when it
    stored one, otherwise by a new, independently equilibrated chain (a different seed) whose
    frames are appended.
    """
    done = work / f"T{temperature:.3f}.npz"
    have: dict[str, np.ndarray] = {}
    if done.exists():
        with np.load(done) as data:
            have = {k: data[k] for k in data.files}
        if len(have["energies"]) >= n_frames:
            return have
    n_base = len(have["energies"]) if have else 0
    partial = work / f"T{temperature:.3f}.partial.npz"
    n = system.rigid_bodies.n_molecules
    box = system.rigid_bodies.box
    n_new = n_frames - n_base
    segment_seed = seed + 7919 * n_base
    integrator = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, FRICTION_PER_PS / unit.picosecond,
                                                 TIMESTEP_PS * unit.picoseconds)
    integrator.setRandomNumberSeed(segment_seed)
    context = openmm.Context(system.openmm_system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": "1"})
    frames = np.empty((n_new, n * 12), dtype=np.float32)
    energies = np.empty(n_new)
    start, wall = 0, 0.0
    t0 = time.perf_counter()
    resumed = False
    if partial.exists():
        with np.load(partial) as data:
            if int(data.get("n_base", 0)) == n_base:
                start, wall = int(data["n_done"]), float(data["wall_s"])
                frames[:start], energies[:start] = data["frames"][:start], data["energies"][:start]
                context.setPositions(data["positions"])
                context.setVelocities(data["velocities"])
                resumed = True
    if not resumed and "positions" in have:
        context.setPositions(have["positions"])
        context.setVelocities(have["velocities"])
    elif not resumed:
        context.setPositions(system.x0.numpy().reshape(-1, 3))
        context.setVelocitiesToTemperature(temperature * unit.kelvin, segment_seed)
        integrator.step(settings["equilibration"])
    bar = tqdm(total=n_frames, initial=n_base + start, desc=f"{temperature:6.1f} K", unit="frame", mininterval=5.0)

    def snapshot() -> dict[str, np.ndarray]:
        state = context.getState(positions=True, velocities=True)
        return {"positions": state.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                "velocities": state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)}

    for i in range(start, n_new):
        integrator.step(settings["stride"])
        state = context.getState(positions=True, energy=True)
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        frames[i] = whole_molecules(np.asarray(positions), box, n).reshape(-1)
        energies[i] = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        bar.update()
        if (i + 1) % settings["chunk"] == 0 and i + 1 < n_new:
            save_npz(partial, frames=frames[: i + 1], energies=energies[: i + 1], n_done=np.array(i + 1),
                     n_base=np.array(n_base), wall_s=np.array(wall + time.perf_counter() - t0), **snapshot())
    bar.close()
    wall += time.perf_counter() - t0
    if have:
        frames = np.concatenate([have["frames"], frames])
        energies = np.concatenate([have["energies"], energies])
        wall += float(have["wall_s"])
    result = {"frames": frames, "energies": energies, "wall_s": np.array(wall), **snapshot()}
    save_npz(done, **result)
    partial.unlink(missing_ok=True)
    return result


def write_base_frames(out: Path, run: dict, keep: np.ndarray, g: float, settings: dict, temperature: float,
                      box: np.ndarray) -> None:
    """``md_250K.npz`` (all frames) and ``md_250K_small.npz`` (the first SMALL_FRAMES) with the decorrelated indices."""
    common = dict(stride_steps=np.array(settings["stride"]), timestep_ps=np.array(TIMESTEP_PS),
                  temperature=np.array(temperature), g=np.array(g), box=box)
    save_npz(out / "md_250K.npz", sites=run["frames"], energies=run["energies"], decorrelated=keep, **common)
    small = min(SMALL_FRAMES, len(run["energies"]))
    save_npz(out / "md_250K_small.npz", sites=run["frames"][:small], energies=run["energies"][:small],
             decorrelated=keep[keep < small], **common)


def mbar_reference(temps: np.ndarray, energies: list[np.ndarray]) -> dict:
    """Subsample each series by its statistical inefficiency and run MBAR on ``u_kn = U_n / (k_B T_k)``."""
    from pymbar import MBAR, timeseries

    g = [float(timeseries.statistical_inefficiency(e)) for e in energies]
    keep = [np.asarray(timeseries.subsample_correlated_data(e, g=gk)) for e, gk in zip(energies, g)]
    u_all = np.concatenate([e[k] for e, k in zip(energies, keep)])
    n_k = np.array([len(k) for k in keep])
    u_kn = u_all[None, :] / (K_B * temps[:, None])
    # shift each state's reduced potentials by a constant (f_k shifts by it; added back below):
    # with |u| ~ 10^3 the unshifted weights underflow and pymbar reports non-normalised weights
    offset = u_kn.min(axis=1)
    mbar = MBAR(u_kn - offset[:, None], n_k, initialize="BAR")
    result = mbar.compute_free_energy_differences()
    result["Delta_f"] = result["Delta_f"] + (offset[None, :] - offset[:, None])
    overlap = mbar.compute_overlap()["matrix"]
    neighbours = np.array([overlap[k, k + 1] for k in range(len(temps) - 1)])
    return {
        "delta_f_250_to_100": float(result["Delta_f"][0, -1]),
        "error": float(result["dDelta_f"][0, -1]),
        "f_k": [float(v) for v in result["Delta_f"][0]],
        "temperatures": [float(t) for t in temps],
        "n_samples": [int(v) for v in n_k],
        "n_frames": [int(len(e)) for e in energies],
        "statistical_inefficiency": g,
        "neighbour_overlap": [float(v) for v in neighbours],
        "min_neighbour_overlap": float(neighbours.min()),
        "decorrelated_indices_250K": keep[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=16, choices=(16, 128), help="molecules (system ice_xi_tip4p[_128])")
    parser.add_argument("--quick", action="store_true", help="smoke run: few frames, outputs under data/.work only")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--temperatures", type=int, default=None,
                        help="number of temperatures (default 11 for N = 16, 31 for N = 128: energy fluctuations "
                             "grow as sqrt(N), so neighbouring states need closer spacing)")
    parser.add_argument("--only", type=int, nargs="+", metavar="K",
                        help="run only these temperature indices (0 = 250 K) and stop before MBAR: start several "
                             "processes on disjoint sets, then run once without --only to combine")
    parser.add_argument("--frames-first", type=int, default=None,
                        help="frames at 250 K (default 10 000; e.g. 1000 for N = 128 base samples)")
    parser.add_argument("--base-only", action="store_true",
                        help="only the 250 K run and its md_250K files (LFEP base samples), no MBAR reference")
    args = parser.parse_args()
    settings = dict(SETTINGS["quick" if args.quick else "full"])
    if args.frames_first is not None:
        settings["frames_first"] = args.frames_first
    name = "ice_xi_tip4p" if args.n == 16 else "ice_xi_tip4p_128"
    work = HERE / ".work" / (name + ("_quick" if args.quick else "") + f"_friction{FRICTION_PER_PS:g}")
    work.mkdir(parents=True, exist_ok=True)
    out = work if args.quick else HERE / name
    out.mkdir(parents=True, exist_ok=True)

    system = bf.load_system(name)
    n_temperatures = args.temperatures or (settings["n_temperatures"] if args.n == 16 else 31)
    temps = temperatures(n_temperatures)
    cutoff = next(f for f in system.openmm_system.getForces() if isinstance(f, openmm.NonbondedForce)).getCutoffDistance()
    cutoff_nm = float(cutoff.value_in_unit(unit.nanometer))
    print(f"{name}: N={system.rigid_bodies.n_molecules}, box {system.rigid_bodies.box.round(5).tolist()} nm, "
          f"cutoff {cutoff_nm:.5f} nm; temperatures {np.round(temps, 2).tolist()}")
    runs = []
    for k, temperature in enumerate(temps):
        if (args.only is not None and k not in args.only) or (args.base_only and k > 0):
            continue
        n_frames = settings["frames_first"] if k == 0 else settings["frames_other"]
        runs.append(run_temperature(system, float(temperature), n_frames, settings, work, args.seed + k))
    if args.only is not None:
        print(f"ran temperatures {args.only}; run again without --only to combine them")
        return
    if args.base_only:
        from pymbar import timeseries

        g0 = float(timeseries.statistical_inefficiency(runs[0]["energies"]))
        keep0 = np.asarray(timeseries.subsample_correlated_data(runs[0]["energies"], g=g0))
        write_base_frames(out, runs[0], keep0, g0, settings, float(temps[0]), system.rigid_bodies.box)
        print(f"250 K base frames: {len(runs[0]['energies'])} ({len(keep0)} decorrelated, g = {g0:.2f}) in {out}")
        return
    md_wall = float(sum(r["wall_s"] for r in runs))  # MD time of the runs, summed over resumed sessions

    ref = mbar_reference(temps, [r["energies"] for r in runs])
    keep = ref.pop("decorrelated_indices_250K")
    print(f"statistical inefficiency (frames of {settings['stride']} steps): "
          f"{np.round(ref['statistical_inefficiency'], 2).tolist()}")
    print(f"decorrelated samples per temperature: {ref['n_samples']}")
    print(f"neighbour overlaps: {np.round(ref['neighbour_overlap'], 3).tolist()} (min {ref['min_neighbour_overlap']:.3f})")
    print(f"MBAR: Δf(250 K → 100 K) = f(100) − f(250) = {ref['delta_f_250_to_100']:.3f} ± {ref['error']:.3f} "
          f"(methods.md, 1 nm-ish cutoff: {'−669.711 ± 0.054' if args.n == 16 else '−5316.481 ± 0.111'})")
    box = system.rigid_bodies.box
    write_base_frames(out, runs[0], keep, ref["statistical_inefficiency"][0], settings, float(temps[0]), box)
    entry = {
        **ref,
        "cutoff_nm": cutoff_nm,
        "box_nm": [float(v) for v in box],
        "n_molecules": int(system.rigid_bodies.n_molecules),
        "k_B": K_B,
        "md": {"integrator": "LangevinMiddleIntegrator", "timestep_ps": TIMESTEP_PS, "friction_per_ps": FRICTION_PER_PS,
               "stride_steps": settings["stride"], "equilibration_steps": settings["equilibration"],
               "platform": "CPU (1 thread)", "rigid_water": "SETTLE", "seed": args.seed,
               "wall_clock_s": round(md_wall, 1)},
        "ewald_tolerance": 1e-4,
        "script": "data/make_ice_reference.py",
    }
    print(f"MD wall-clock {md_wall:.0f} s")
    if args.quick:
        atomic_write(work / "reference_quick.json", lambda f: f.write(json.dumps(entry, indent=1).encode()))
        return
    ref_path = HERE / "reference.json"
    reference = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    reference.setdefault(name, {})["mbar"] = entry
    text = json.dumps(reference, indent=1, sort_keys=True)
    atomic_write(ref_path, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
