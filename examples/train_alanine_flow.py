"""Train the shipped Boltzmann generator of alanine dipeptide (implicit solvent, 300 K) and check it.

Run: ``python examples/train_alanine_flow.py`` (resumable: rerun the same command after a kill).

Stages (each checkpoints under ``runs/train_<system>/``; a finished stage is not redone):

1. training data — ``data/make_training_data.py`` (plain MD + umbrella MD frames, ~7 min) if
   ``data/<system>/training`` is missing;
2. maximum likelihood on those frames (uniform weights: the mixture deliberately over-covers
   φ > 0) — neural spline couplings on internal coordinates, float32 on one thread — keeping the
   parameters with the best likelihood on held-out frames (the last 10 % of each trajectory);
3. a mix of maximum likelihood and reverse KL (energy-based, forces from OpenMM), which moves the
   flow toward the Boltzmann distribution where the data are thin;
4. the model is written to ``data/<system>/flow.pt`` (the default of ``boltzflow sample <system>``)
   and checked on fresh samples: relative ESS, and the reweighted ΔF(φ>0 − φ<0) next to the umbrella
   reference of ``data/reference.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import boltzflow as bf
from boltzflow.flows import build_flow, load_model, save_model, split_holdout, train
from boltzflow.reference_data import MODEL_FILE, reference_estimates

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "layers": 8, "hidden": (256, 256), "bins": 8, "batch": 256,
    "ml_iterations": 5000, "ml_lr": 1e-3, "ml_lr_final": 3e-5, "holdout": 0.1,
    "kl_iterations": 3000, "kl_lr": 1e-4, "kl_lr_final": 1e-5, "kl_w_ml": 1.0,
}


def training_data(system_name: str) -> bf.SampleSet:
    folder = ROOT / "data" / system_name / "training"
    if not (folder / "samples.npz").exists():
        subprocess.run([sys.executable, str(ROOT / "data" / "make_training_data.py"), "--system", system_name],
                       check=True)
    return bf.SampleSet.load(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="alanine_dipeptide_implicit")
    parser.add_argument("--check-n", type=int, default=20_000, help="fresh flow samples for the final check")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread is fastest for these small networks on 2 cores
    system = bf.load_system(args.system)
    work = ROOT / "runs" / f"train_{args.system}"
    work.mkdir(parents=True, exist_ok=True)
    data, held_out = split_holdout(training_data(args.system), SETTINGS["holdout"])
    s = SETTINGS

    torch.manual_seed(0)
    flow = build_flow(system, n_layers=s["layers"], hidden=s["hidden"], num_bins=s["bins"], data=data).float()
    ml = train(system, flow, data, n_iterations=s["ml_iterations"], batch_size=s["batch"], lr=s["ml_lr"],
               lr_final=s["ml_lr_final"], data_weighting="uniform", seed=0, ess_every=250, validation=held_out,
               validate_every=250, checkpoint=work / "ml_checkpoint.pt")
    kl = train(system, flow, data, n_iterations=s["kl_iterations"], batch_size=s["batch"], lr=s["kl_lr"],
               lr_final=s["kl_lr_final"], w_ml=s["kl_w_ml"], w_kl=1.0, data_weighting="uniform", seed=1,
               checkpoint=work / "kl_checkpoint.pt")
    train_seconds = ml.seconds + kl.seconds

    metadata = {
        "system": args.system, "script": "examples/train_alanine_flow.py",
        **{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "n_training_frames": len(data), "train_seconds": round(train_seconds, 1),
        "ml_best_iteration": ml.best_iteration, "kl_final_batch_ess": kl.relative_ess[-1],
    }
    path = save_model(flow, ROOT / "data" / args.system / MODEL_FILE, metadata)
    # the check uses the model as shipped (parameters stored in half precision)
    samples = bf.sample(system, sampler="flow", model=path, n=args.check_n, seed=2024, progress=False)
    delta_f = bf.estimate.free_energy_difference(samples, system.states["A"], system.states["B"])
    relative_ess = bf.estimate.relative_ess(samples)
    metadata["check"] = {"n": args.check_n, "relative_ess": relative_ess, "delta_f": delta_f.value,
                         "delta_f_error": delta_f.error}
    save_model(load_model(path, system), path, metadata)
    reference = reference_estimates(args.system)["umbrella"]["delta_f"]
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, training {train_seconds / 60:.0f} min)")
    print(f"relative ESS {relative_ess:.3f} ({np.count_nonzero(~np.isfinite(samples.log_weights))} zero-weight "
          f"samples of {len(samples)})")
    print(f"ΔF(φ>0 − φ<0) = {delta_f.value:.2f} ± {delta_f.error:.2f} kT; umbrella reference "
          f"{reference['value']:.2f} ± {reference['error']:.2f} kT")


if __name__ == "__main__":
    main()
