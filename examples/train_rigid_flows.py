"""Train and ship the rigid-body flow of ``tetrahedron_field``; check it against the exact reference.

Run: ``python examples/train_rigid_flows.py`` (one thread, about 5 minutes; resumable — rerun after a kill).

The flow (``boltzflow.flows.rigid``: linear and meridian-spline maps of S³, antipodally symmetric)
is trained without any data:

1. **annealed reverse KL**: reverse KL at temperatures falling geometrically from ``T_START`` to
   the system's 300 K. At 2000 K the four "vertex up" modes are joined by barriers of about
   1 kT, so reverse KL from the uniform start covers all of them; each cooler stage starts from
   the previous flow, which keeps every mode while the barriers grow (plain reverse KL at 300 K
   from the uniform start collapses onto the deepest mode: relative ESS 0.8 on its own samples,
   all other modes missing);
2. **refinement at 300 K**: rounds of reverse KL plus maximum likelihood on the flow's own
   importance-weighted samples (drawn fresh each round, ML batches chosen by their weights): a
   forward-KL term that moves probability mass between modes, which reverse KL does poorly;
3. the model is saved (parameters in half precision), reloaded, and 20 000 fresh samples are
   reweighted: relative ESS, the four mode weights, ΔF(vertex 1 up − vertex 0 up) and log Z next
   to the exact values of ``data/reference.json`` (quadrature over SO(3)); only a model with all
   mode weights within 0.05 of the exact ones and relative ESS ≥ 0.5 is copied to
   ``data/tetrahedron_field/flow.pt``, the default of ``boltzflow sample tetrahedron_field``.

Each training stage checkpoints under ``--out`` (default ``runs/rigid_flows``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numba
import numpy as np
import torch

import boltzflow as bf
from boltzflow.flows import build_flow, load_model, save_model, train
from boltzflow.reference_data import MODEL_FILE, reference_estimates

ROOT = Path(__file__).resolve().parents[1]
NAME = "tetrahedron_field"
ARCHITECTURE = {"n_layers": 4, "num_bins": 8, "hidden": (64, 64)}
T_START = 2000.0  # K
ANNEALING_STAGES = 6  # temperatures T_START ... 300 K, geometric
ANNEALING_ITERATIONS = 150
REFINE_ROUNDS = 4
REFINE_ITERATIONS = 200
REFINE_SAMPLES = 20_000
BATCH = 256


def evaluate(system: bf.System, model: Path, n: int = 20_000) -> tuple[bool, str]:
    """Quality gate and report of a saved model against the exact reference."""
    exact = reference_estimates(NAME)["exact"]
    samples = bf.sample(system, sampler="flow", model=model, n=n, seed=123, progress=False)
    ess = bf.estimate.relative_ess(samples)
    lines = [f"relative ESS {ess:.3f} ({n} samples, {samples.n_failed} failed)"]
    worst = 0.0
    for i in range(4):
        estimate = bf.estimate.expectation(samples, system.observables[f"up{i}"])
        gap = estimate.value - exact[f"p_up{i}"]
        worst = max(worst, abs(gap))
        lines.append(f"  vertex {i} up: {estimate.value:.4f} ± {estimate.error:.4f} (exact {exact[f'p_up{i}']:.4f}, "
                     f"difference {gap:+.4f})")
    delta_f = bf.estimate.free_energy_difference(samples, system.states["A"], system.states["B"])
    log_z = bf.estimate.log_partition_function(samples)
    mean_u = bf.estimate.expectation(samples, samples.energies)
    lines.append(f"  ΔF(B−A) {delta_f.value:.4f} ± {delta_f.error:.4f} kT (exact {exact['delta_f_b_minus_a']:.4f})")
    lines.append(f"  log Z {log_z.value:.4f} ± {log_z.error:.4f} (exact {exact['log_z']:.4f}, S³ measure)")
    lines.append(f"  <u> {mean_u.value:.4f} ± {mean_u.error:.4f} kT (exact {exact['mean_energy']:.4f})")
    return worst <= 0.05 and ess >= 0.5, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "rigid_flows"), help="checkpoints and candidate model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small flow, cheap energy: one thread each is fastest on a busy machine
    numba.set_num_threads(1)
    out = Path(args.out)
    system = bf.load_system(NAME)
    seconds = 0.0  # training time, summed over resumed sessions (from the checkpoints' histories)
    torch.manual_seed(args.seed)
    flow = build_flow(system, **ARCHITECTURE)
    temperatures = np.geomspace(T_START, system.temperature, ANNEALING_STAGES)
    for stage, temperature in enumerate(temperatures):
        print(f"annealing stage {stage}: reverse KL at {temperature:.0f} K")
        history = train(system.at_temperature(float(temperature)), flow, n_iterations=ANNEALING_ITERATIONS,
                        batch_size=BATCH, lr=2e-3, w_ml=0.0, w_kl=1.0, seed=args.seed + stage,
                        checkpoint=out / f"anneal{stage}.pt")
        seconds += history.seconds
    for round_ in range(REFINE_ROUNDS):
        print(f"refinement round {round_}: reverse KL + ML on the flow's reweighted samples at 300 K")
        data = bf.sample(system, sampler="flow", model=flow, n=REFINE_SAMPLES, seed=1000 + round_, progress=False)
        last = round_ == REFINE_ROUNDS - 1
        history = train(system, flow, data=data, n_iterations=REFINE_ITERATIONS, batch_size=BATCH, lr=1e-3,
                        lr_final=1e-5 if last else None, w_ml=1.0, w_kl=1.0, seed=args.seed + 100 + round_,
                        checkpoint=out / f"refine{round_}.pt")
        seconds += history.seconds
    candidate = save_model(flow, out / f"{NAME}.pt", {
        "system": NAME, "script": "examples/train_rigid_flows.py", **{k: list(v) if isinstance(v, tuple) else v
                                                                      for k, v in ARCHITECTURE.items()},
        "annealing": [float(t) for t in temperatures], "annealing_iterations": ANNEALING_ITERATIONS,
        "refine_rounds": REFINE_ROUNDS, "refine_iterations": REFINE_ITERATIONS, "batch_size": BATCH,
        "train_seconds": round(seconds, 1),
    })
    load_model(candidate, system)  # the saved file rebuilds
    passed, report = evaluate(system, candidate)
    if passed:
        (ROOT / "data" / NAME).mkdir(exist_ok=True)
        shutil.copyfile(candidate, ROOT / "data" / NAME / MODEL_FILE)
        print(f"{NAME}: shipped as data/{NAME}/{MODEL_FILE} ({seconds:.0f} s of training steps)\n{report}")
    else:
        print(f"{NAME}: NOT shipped, kept in {candidate} ({seconds:.0f} s of training steps)\n{report}")
    for checkpoint in out.glob("*.pt"):
        if checkpoint != candidate:
            checkpoint.unlink()


if __name__ == "__main__":
    main()
