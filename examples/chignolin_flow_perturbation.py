"""Flow-perturbation SMC on chignolin against the project's MD reference, Hutchinson's bias beside it.

Run after ``python data/make_chignolin_data.py`` (MD reference and training frames)::

    python examples/chignolin_flow_perturbation.py --out runs/chignolin_fp

1. **Target.** Chignolin's energy is rotation invariant; the target is ``u + u_R`` with the
   normalised orientation prior :class:`~boltzflow.energy.orientation.OrientationPrior` (κ = 100
   on the backbone atoms N, Cα, C): the same partition function and the same averages of every
   rotation-invariant observable, but the molecule now sits within ~6° of the reference
   orientation, so the flow has to learn the shape only (not a uniform spread over SO(3)).
2. **Flow.** A continuous flow (flow matching, :mod:`boltzflow.flows.continuous`) trained on the
   MD training frames superimposed on the reference and turned by rotations drawn from the
   prior; σ_F trained for flow perturbation. Saved as ``cnf.pt`` in ``--out`` (reused on reruns).
3. **Sampling**, with the same flow, particle count and seed:

   * ``fp-is`` — independent flow-perturbation weights (unbiased, but in D = 441 their effective
     sample size is a handful: the reason for SMC); unweighted, "the flow as drawn";
   * ``fp-smc`` — SMC on the extended space ``(x_T, ε)`` with flow-perturbation weights (unbiased);
   * ``fp-smc`` with ``estimator="hutchinson"`` — the same SMC with the cheap biased weights
     (one Gaussian probe, ``ε``, per path), the comparison of Peng & Gao.

For each: ⟨u⟩ (chignolin's own reduced energy, kT), the folded fraction (Cα(Y2)–Cα(W9) <
0.6 nm) and ⟨d_y2w9⟩ with errors from the estimation layer, the distinct final particles and the
last acceptance rate, and the gap to the MD reference (``data/reference.json``) in combined
standard errors. Writes ``summary.json`` and ``chignolin_fp.png`` (histograms of d_y2w9 and u
against the MD frames, acceptance along β) into ``--out``; every run is checkpointed and kept, so
a rerun resumes or reuses it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import boltzflow as bf
from boltzflow.energy import OrientationPrior
from boltzflow.estimate.report import summarize
from boltzflow.estimate.result import format_value_error
from boltzflow.estimate.weights import normalized_log_weights
from boltzflow.flows.continuous import build_continuous_flow, save_continuous_flow
from boltzflow.flows.continuous_training import train_continuous_flow, train_sigma_f
from boltzflow.io import atomic_write
from boltzflow.reference_data import reference_estimates

NAME = "chignolin_implicit"
DATA = Path(__file__).resolve().parents[1] / "data" / NAME  # MD frames: in the repository, not in the wheel
RUNS = {  # label: (sampler, estimator)
    "fp-is (flow as drawn, FP weights)": ("fp-is", "perturbed"),
    "fp-smc (flow perturbation)": ("fp-smc", "perturbed"),
    "fp-smc (Hutchinson, 1 probe)": ("fp-smc", "hutchinson"),
}
QUANTITIES = ("u", "folded", "d_y2w9")
BACKBONE = ("N", "CA", "C")


def orientation_target(system: bf.System, kappa: float) -> tuple[bf.System, OrientationPrior]:
    """``system`` with the orientation prior added to its energy (same Z, same invariant averages)."""
    atoms = [a.index for a in system.topology.atoms if a.name in BACKBONE]
    prior = OrientationPrior(system.x0.detach().cpu().numpy().reshape(-1, 3), kappa, atoms=atoms)
    return replace(system, energy=system.energy + prior), prior


def train_flow(target: bf.System, prior: OrientationPrior | None, data: Path, out: Path, hidden: list[int],
               iterations: int, ode_steps: int, seed: int) -> Path:
    """Flow matching, then σ_F; returns the model path (an existing model in ``out`` is reused).

    With ``prior`` (Cartesian coordinates) the frames are superimposed on the reference and turned
    by rotations drawn from the prior; without, the flow models internal coordinates.
    """
    path = out / "cnf.pt"
    if path.exists():
        return path
    frames = bf.SampleSet.load(data)
    x = frames.x
    if prior is not None:
        aligned = prior.align(x).reshape(len(frames), -1, 3)
        centre = aligned[:, prior.atoms].mean(1, keepdims=True)
        rotations = prior.sample_rotations(len(frames), np.random.default_rng(seed))
        x = (np.einsum("bij,bnj->bni", rotations, aligned - centre) + centre).reshape(len(frames), -1)
    training = bf.SampleSet(x=x, energies=np.zeros(len(x)), metadata={"ml_weighting": "uniform"})
    torch.manual_seed(seed)
    flow = build_continuous_flow(target, hidden=tuple(hidden), n_steps=ode_steps, data=training, seed=seed,
                                 internal_coordinates=prior is None)
    start = time.perf_counter()
    history = train_continuous_flow(target, flow, training, n_iterations=iterations, lr=1e-3, lr_final=1e-5,
                                    seed=seed, data_weighting="uniform", checkpoint=out / "cnf_checkpoint.pt")
    train_sigma_f(flow, seed=seed)
    save_continuous_flow(flow, path, {"system": NAME, "data": str(data), "iterations": iterations,
                                      "coordinates": "cartesian" if prior is not None else "internal",
                                      "orientation_kappa": None if prior is None else prior.kappa,
                                      "final_loss": history.loss[-1],
                                      "training_seconds": round(time.perf_counter() - start, 1)})
    (out / "cnf_checkpoint.pt").unlink(missing_ok=True)
    return path


def run(system: bf.System, model: Path, sampler: str, estimator: str, n: int, seed: int, smc: dict,
        out: Path) -> bf.SampleSet:
    """One run (loaded from ``out`` when it finished before; resumed from its checkpoint if it was cut)."""
    folder = out / f"{sampler}-{estimator}"
    options = smc if sampler == "fp-smc" else {"batch_size": smc["batch_size"]}
    if (folder / "samples.npz").exists():
        samples = bf.SampleSet.load(folder)
        changed = {k: (samples.metadata.get(k), v) for k, v in options.items()
                   if k != "batch_size" and samples.metadata.get(k) != v}
        if changed:
            raise SystemExit(f"{folder} holds a run with other settings (stored, requested: {changed}); "
                             "choose another --out or delete it")
        return samples
    start = time.perf_counter()
    samples = bf.sample(system, sampler, n=n, seed=seed, model=str(model), estimator=estimator,
                        checkpoint=out / f"{sampler}-{estimator}.checkpoint.npz", **options)
    samples.metadata["wall_seconds"] = round(time.perf_counter() - start, 1)  # of the last (resumed) session
    samples.save(folder)
    (out / f"{sampler}-{estimator}.checkpoint.npz").unlink(missing_ok=True)
    return samples


def plot(path: Path, reference: bf.SampleSet | None, runs: dict[str, bf.SampleSet], system: bf.System,
         energy: Callable[[np.ndarray], np.ndarray]) -> None:
    """d_y2w9 and u (``energy``) histograms, reweighted, beside the MD frames; SMC acceptance along β."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = system.observables["d_y2w9"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    sets = ({"MD reference (300 K)": (reference, reference.energies, None)} if reference is not None else {}) | {
        label: (s, energy(s.x), np.exp(normalized_log_weights(s))) for label, s in runs.items()}
    all_u = np.concatenate([u[np.isfinite(u)] for _, u, _ in sets.values()])
    u_range = np.percentile(all_u, [0.5, 99.5]) if reference is None else (
        np.percentile(reference.energies, 0.1) - 20, np.percentile(reference.energies, 99.9) + 160)
    for label, (s, u, w) in sets.items():
        finite = np.isfinite(u)
        style = {"histtype": "step", "density": True, "lw": 2 if w is None else 1.3, "label": label}
        axes[0].hist(d(s.x[finite]), bins=60, range=(0.3, 1.6), weights=None if w is None else w[finite], **style)
        axes[1].hist(np.clip(u[finite], *u_range), bins=80, range=u_range,
                     weights=None if w is None else w[finite], **style)
    axes[0].axvline(0.6, color="k", ls=":", lw=1)
    axes[0].set(xlabel="d(Cα Y2 – Cα W9) / nm", ylabel="density", title="folding coordinate (folded < 0.6 nm)")
    axes[1].set(xlabel="u / kT (clipped to the range)", title="reduced energy")
    for label, s in runs.items():
        if "acceptance_rates" in s.metadata:
            rates = np.asarray(s.metadata["acceptance_rates"], dtype=float)
            line, = axes[2].plot(np.arange(1, len(rates) + 1), rates, label=f"{label}, refresh")
            if "mala_acceptance_rates" in s.metadata:
                rates = np.asarray(s.metadata["mala_acceptance_rates"], dtype=float)
                axes[2].plot(np.arange(1, len(rates) + 1), rates, ls="--", color=line.get_color(),
                             label=f"{label}, MALA")
    axes[2].set(xlabel="temperature index j (β rises to 1)", ylabel="acceptance", yscale="log",
                title="SMC acceptance (refresh and gradient moves)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def _row(label: str, samples: bf.SampleSet, summary: dict, md: dict | None) -> dict:
    values = {"u": summary["observables"]["u"], "folded": summary["observables"]["folded"],
              "d_y2w9": summary["observables"]["d_y2w9"]}
    row = {"run": label, "n": len(samples), "n_failed": int(samples.n_failed),
           "relative_ess": summary["relative_ess"], "n_unique": samples.metadata.get("n_unique"),
           "final_acceptance": (samples.metadata.get("acceptance_rates") or [None])[-1],
           "wall_seconds": samples.metadata.get("wall_seconds"),
           "estimates": values, "z": {}}
    if md is not None:
        ref = {"u": md["mean_energy"], "folded": md["observables"]["folded"], "d_y2w9": md["observables"]["d_y2w9"]}
        for key in QUANTITIES:
            combined = math.hypot(values[key]["error"], ref[key]["error"])
            row["z"][key] = (values[key]["value"] - ref[key]["value"]) / combined if combined > 0 else float("nan")
    return row


def _fmt(e: dict) -> str:
    value, error = format_value_error(e["value"], e["error"])
    return f"{value} ± {error}"


def main(out: Path, data: Path, coordinates: str, kappa: float, hidden: list[int], iterations: int, ode_steps: int, n: int,
         n_temperatures: int, mcmc_steps: int, n_replicas: int, k_max: int, k_min: int, seed: int,
         batch_size: int, gradient_steps: int = 0, mala_step: float = 1e-3) -> dict:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    system = bf.load_system(NAME)
    target, prior = orientation_target(system, kappa) if coordinates == "cartesian" else (system, None)
    model = train_flow(target, prior, data, out, hidden, iterations, ode_steps, seed)
    folded = system.states["folded"]

    def energy(x: np.ndarray) -> np.ndarray:  # chignolin's own reduced energy, without the orientation prior
        return system.energy.evaluate(x, need_gradient=False).energy

    observables = {"u": energy, **system.observables, "folded": lambda x: folded(x).astype(np.float64)}
    entry = reference_estimates(NAME) or {}
    md = entry.get("md")
    smc = {"n_temperatures": n_temperatures, "mcmc_steps": mcmc_steps, "n_replicas": n_replicas, "k_max": k_max,
           "k_min": k_min, "batch_size": batch_size, "gradient_steps": gradient_steps, "mala_step": mala_step}
    runs = {label: run(target, model, sampler, estimator, n, seed, smc, out)
            for label, (sampler, estimator) in RUNS.items()}
    rows = []
    as_drawn = runs["fp-is (flow as drawn, FP weights)"]
    drawn = bf.SampleSet(x=as_drawn.x, energies=as_drawn.energies, metadata={"sampler": "flow as drawn"})
    for label, samples in {"flow as drawn (unweighted)": drawn, **runs}.items():
        rows.append(_row(label, samples, summarize(samples, observables=observables, seed=seed), md))
    md_row = None
    if md is not None:
        md_row = {"run": "MD reference", "estimates": {"u": md["mean_energy"], "folded": md["observables"]["folded"],
                                                        "d_y2w9": md["observables"]["d_y2w9"]}}
    print(f"{'run':38s} {'<u> / kT':>20s} {'folded fraction':>18s} {'<d_y2w9> / nm':>18s} {'rel. ESS':>9s} "
          f"{'unique':>7s} {'acc(β=1)':>9s}")
    for row in ([md_row] if md_row else []) + rows:
        e = row["estimates"]
        z = row.get("z") or {}
        gap = "  ".join(f"{k} {z[k]:+.1f}σ" for k in QUANTITIES if k in z)
        if not all(e[k].get("reliable", True) for k in QUANTITIES):
            gap += "  UNRELIABLE (estimation layer)"
        acc = row.get("final_acceptance")
        print(f"{row['run']:38s} {_fmt(e['u']):>20s} {_fmt(e['folded']):>18s} {_fmt(e['d_y2w9']):>18s} "
              f"{row.get('relative_ess', float('nan')):9.4f} {row.get('n_unique') or ''!s:>7s} "
              f"{'' if acc is None else f'{acc:.3f}':>9s}  {gap}")
    if md is None:
        print(f"(no MD reference for {NAME} in data/reference.json: run data/make_chignolin_data.py)")
    summary = {"model": str(model), "coordinates": coordinates,
               "orientation_kappa": kappa if coordinates == "cartesian" else None, "n": n, "seed": seed, "smc": smc, "reference": md_row, "runs": rows}
    text = json.dumps(summary, indent=1, default=float)
    atomic_write(out / "summary.json", lambda f: f.write(text.encode()))
    reference = bf.SampleSet.load(DATA) if (DATA / "samples.npz").exists() else None
    plot(out / "chignolin_fp.png", reference, runs, system, energy)
    print(f"wrote {out / 'summary.json'} and {out / 'chignolin_fp.png'}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/chignolin_fp"))
    parser.add_argument("--data", type=Path, default=DATA / "training",
                        help="training frames (default: those of data/make_chignolin_data.py)")
    parser.add_argument("--coordinates", choices=["internal", "cartesian"], default="internal",
                        help="the flow's coordinates: bonds/angles/dihedrals, or Cartesian with the orientation prior")
    parser.add_argument("--kappa", type=float, default=100.0, help="orientation prior concentration (cartesian)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512, 512], help="velocity MLP widths")
    parser.add_argument("--iterations", type=int, default=20000, help="flow-matching steps")
    parser.add_argument("--ode-steps", type=int, default=20, help="RK4 steps per map")
    parser.add_argument("--n", type=int, default=512, help="particles (all replicas)")
    parser.add_argument("--temperatures", type=int, default=100, help="SMC exponents β from 0.01 to 1")
    parser.add_argument("--mcmc-steps", type=int, default=2, help="Metropolis moves per temperature")
    parser.add_argument("--replicas", type=int, default=8, help="independent SMC populations")
    parser.add_argument("--k-max", type=int, default=100, help="refreshed coordinates per move at the first β")
    parser.add_argument("--k-min", type=int, default=2, help="... and at β = 1")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--gradient-steps", type=int, default=0,
                        help="tamed-MALA moves per temperature after the Metropolis moves (autograd through the flow)")
    parser.add_argument("--mala-step", type=float, default=1e-3, help="initial MALA step h (adapted)")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    main(a.out, a.data, a.coordinates, a.kappa, a.hidden, a.iterations, a.ode_steps, a.n, a.temperatures,
         a.mcmc_steps, a.replicas, a.k_max, a.k_min, a.seed, a.batch_size, a.gradient_steps, a.mala_step)
