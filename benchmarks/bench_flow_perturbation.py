"""Flow perturbation vs exact Jacobian vs Hutchinson: cost per weight, and bias on a 10D mixture.

Part 1 — cost per importance weight at D = 525 (chignolin-sized: 175 atoms × 3). A continuous flow
with a velocity MLP of realistic size (3 × 512 hidden, random weights: the cost does not depend on
training) and 20 RK4 steps, on a 525-D two-mode Gaussian mixture. Per method: wall-clock per
weight (energy included; the "+ gradient" rows: a weight and its gradient in (x_T, ε), what one
tamed-MALA move of ``fp-smc`` costs per particle), the cost in ODE passes (velocity-network passes per RK4 stage: FP 2 or
3 — multistep: N backward + N forward single RK4 steps, i.e. 2; exact Jacobian 1 + D; Hutchinson 1 + probes), the same
measured (time / time of one plain ODE pass), and the exact Jacobian's cost over each method's. FP and Hutchinson run in batches; the
exact Jacobian on a few samples (it is linear in the batch).

Part 2 — the 10D mixture ``gmm10`` (weights 1:3, exact P(A) = 0.2500): a flow trained by flow
matching on deliberately mis-weighted data (1:1 exact draws), then P(A) from each weighting
(importance sampling with exact, single-probe Hutchinson and FP weights — multistep, the default,
perturbed and stretch; FP chains; FP-SMC), with the error bars of the estimation layer and the
Pareto k̂ of importance weights (< 0.5: finite variance) — the comparison of Peng & Gao (FP 0.268,
exact Jacobian 0.282, single-probe Gaussian Hutchinson 0.135).

Part 3 — ``four_wells_2d`` (issue 16: anisotropic, curved; exact P(a < −1.5) = 0.4008): a flow
trained on equal-weight data around the four minima; exact-Jacobian and fp-is weights of each
estimator. The perturbed estimator's weights have infinite variance there (k̂ > 0.5).

Usage, from the repository root::

    python benchmarks/bench_flow_perturbation.py [--batch 256] [--exact-samples 2] [--skip-cost] [--skip-gmm]
        [--skip-four-wells]
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings

import numpy as np
import torch

import boltzflow as bf
from boltzflow.energy.gaussian_mixture import GaussianMixtureEnergy
from boltzflow.estimate import LowESSWarning, expectation, relative_ess
from boltzflow.estimate.pareto import pareto_k
from boltzflow.flows.continuous import ContinuousFlow, VelocityField, build_continuous_flow
from boltzflow.flows.continuous_training import train_continuous_flow, train_sigma_f
from boltzflow.reference_data import reference_estimates
from boltzflow.flows.ode import HutchinsonDivergence, exact_divergence
from boltzflow.flows.perturbation_target import ExtendedTarget
from boltzflow.samplers.flow_perturbation_mala import log_omega_with_gradient


def _timed(fn, repeats: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cost_per_weight(dim: int, hidden: tuple[int, ...], n_steps: int, batch: int, exact_samples: int, repeats: int,
                    device: str) -> None:
    means = np.zeros((2, dim))
    means[:, 0] = [-4.0, 4.0]
    system = bf.System(name=f"gmm{dim}", energy=GaussianMixtureEnergy(means, [1.0, 1.0], [1.0, 3.0]),
                       temperature=1.0, x0=means[1])
    torch.manual_seed(0)
    velocity = VelocityField(dim, hidden, time_features=8)
    velocity.net.net[-1].reset_parameters()  # random, not the zero start of training
    flow = ContinuousFlow(dim, velocity, n_steps=n_steps).to(device)
    n_parameters = sum(p.numel() for p in velocity.parameters())
    g = torch.Generator(device=device).manual_seed(0)
    z = flow.sample_latent(batch, g)
    z_np = z.cpu().numpy()
    eps_np = torch.randn(batch, n_steps * dim, generator=g, dtype=z.dtype, device=device).cpu().numpy()

    def ode_pass() -> None:
        with torch.no_grad():
            flow.decode(z)

    def target(estimator: str) -> tuple[ExtendedTarget, np.ndarray]:
        extended = ExtendedTarget(system, flow, estimator, batch_size=batch)
        return extended, eps_np[:, :extended.noise_dim]  # multistep: N·D noise coordinates, the others D

    def fp(estimator: str) -> None:
        extended, eps = target(estimator)
        extended.evaluate(z_np, eps)

    def fp_gradient(estimator: str) -> None:  # what one MALA move of fp-smc costs per particle
        extended, eps = target(estimator)
        log_omega_with_gradient(extended, z_np, eps)

    def hutchinson(n_probes: int) -> None:
        with torch.no_grad():
            flow.decode_with_log_det(z, HutchinsonDivergence.draw(n_probes, z, "rademacher", g))

    z_exact = z[:exact_samples]

    def exact() -> None:
        with torch.no_grad():
            flow.decode_with_log_det(z_exact, functools.partial(exact_divergence, chunk_size=1))

    per_pass = _timed(ode_pass, repeats) / batch
    rows = [
        ("FP, multistep (default)", "2", _timed(lambda: fp("multistep"), repeats) / batch),
        ("FP, perturbed (sigma_F)", "2", _timed(lambda: fp("perturbed"), repeats) / batch),
        ("FP, stretch (central diff.)", "3", _timed(lambda: fp("stretch"), repeats) / batch),
        ("Hutchinson, 1 probe", "2", _timed(lambda: hutchinson(1), repeats) / batch),
        ("Hutchinson, 2 probes", "3", _timed(lambda: hutchinson(2), repeats) / batch),
        ("FP multistep + gradient (MALA)", "2 + backward", _timed(lambda: fp_gradient("multistep"), repeats) / batch),
        ("FP perturbed + gradient (MALA)", "2 + backward", _timed(lambda: fp_gradient("perturbed"), repeats) / batch),
        ("Hutchinson + gradient (MALA)", "2 + 2nd order", _timed(lambda: fp_gradient("hutchinson"), repeats) / batch),
        ("exact Jacobian trace", f"1 + D = {1 + dim}", _timed(exact, max(1, repeats // 3)) / exact_samples),
    ]
    exact_cost = rows[-1][2]
    print(f"Part 1: cost per weight, D = {dim}, velocity MLP {list(hidden)} ({n_parameters / 1e6:.2f} M parameters), "
          f"{n_steps} RK4 steps, float64, {device}, {torch.get_num_threads()} thread(s); batch {batch}, "
          f"exact Jacobian on {exact_samples} samples; median of {repeats}")
    print(f"one plain ODE pass: {per_pass * 1e3:.2f} ms per sample\n")
    print(f"{'method':<31} {'ODE passes':>14} {'measured':>9} {'ms / weight':>12} {'exact / method':>15}")
    for label, passes, seconds in rows:
        print(f"{label:<31} {passes:>14} {seconds / per_pass:9.1f} {seconds * 1e3:12.2f} {exact_cost / seconds:15.1f}")
    print("\n(ODE passes: velocity-network passes per RK4 stage; 'measured' = wall time / one plain ODE pass. "
          "Hutchinson's weights are biased, FP's are not; of FP's, only multistep's are also of finite variance.)")


FP_IS_RUNS = [
    ("fp-is, multistep (default)", "fp-is", {}),
    ("fp-is, perturbed", "fp-is", {"estimator": "perturbed"}),
    ("fp-is, stretch", "fp-is", {"estimator": "stretch"}),
]


def gmm10_comparison(n: int, hidden: tuple[int, ...], n_steps: int, iterations: int, device: str) -> None:
    system = bf.load_system("gmm10")
    exact_p = system.energy.coordinate_cdf(0, 0.0)
    x, _ = system.energy.sample(20000, np.random.default_rng(0), weights=[1, 1])
    torch.manual_seed(0)
    flow = build_continuous_flow(system, hidden=hidden, n_steps=n_steps, data=x).to(device)
    start = time.perf_counter()
    train_continuous_flow(system, flow, x, n_iterations=iterations, batch_size=256, lr=2e-3, lr_final=1e-5,
                          progress=False, device=device)
    train_sigma_f(flow, progress=False)
    train_seconds = time.perf_counter() - start
    state = system.states["A"]
    with torch.no_grad():
        drawn = flow.to_configuration(flow.decode(flow.sample_latent(20000))).cpu().numpy()
    print(f"\nPart 2: gmm10, exact P(A) = {exact_p:.4f}; flow {list(hidden)}, {n_steps} RK4 steps, trained on 1:1 data "
          f"({iterations} flow-matching steps + sigma_F, {train_seconds:.0f} s); unweighted flow samples give "
          f"P(A) = {np.mean(state(drawn)):.3f}; {n} samples per method\n")
    runs = [
        ("cnf-exact (importance)", "cnf-exact", {"batch_size": 1000}),
        ("cnf-hutchinson, 1 Gaussian", "cnf-hutchinson", {"probe": "gaussian"}),
        ("cnf-hutchinson, 1 Rademacher", "cnf-hutchinson", {"probe": "rademacher"}),
        *FP_IS_RUNS,
        ("fp (Metropolis chains)", "fp", {"n_chains": 32, "warmup": 100}),
        ("fp-smc", "fp-smc", {"n_temperatures": 20}),
    ]
    comparison_table(system, flow, runs, n, exact_p)


def comparison_table(system: bf.System, flow: ContinuousFlow, runs: list[tuple[str, str, dict]], n: int,
                     exact_p: float) -> None:
    """P(A) of each run (label, sampler, options) with its error, z-score, relative ESS, Pareto k̂ and wall time."""
    state = system.states["A"]
    print(f"{'method':<30} {'P(A)':>17} {'z':>6} {'rel. ESS':>9} {'k-hat':>6} {'wall s':>7}")
    for label, sampler, options in runs:
        start = time.perf_counter()
        samples = bf.sample(system, sampler, n=n, seed=1, model=flow, progress=False, **options)
        wall = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LowESSWarning)
            est = expectation(samples, lambda y: state(y).astype(float))
        ess = "chains" if sampler == "fp" else f"{relative_ess(samples):.3f}"
        k_hat = f"{pareto_k(samples.log_weights):.2f}" if sampler in ("cnf-exact", "cnf-hutchinson", "fp-is") else "-"
        z = (est.value - exact_p) / est.error if est.error > 0 else float("nan")
        flag = "" if est.reliable else "  !! unreliable"
        print(f"{label:<30} {est.value:8.4f} ± {est.error:.4f} {z:6.1f} {ess:>9} {k_hat:>6} {wall:7.1f}{flag}")


def four_wells_comparison(n: int, device: str) -> None:
    """Issue 16's anisotropic target: a flow trained on equal-weight data around the four minima."""
    system = bf.load_system("four_wells_2d")
    rng = np.random.default_rng(0)
    a = np.concatenate([c + 0.15 * rng.standard_normal(1000) for c in (-2.0, -1.0, 1.0, 2.0)])
    x = np.stack([a, 0.4 * np.sin(1.5 * a) + 0.5 * rng.standard_normal(a.size)], 1)
    torch.manual_seed(0)
    flow = build_continuous_flow(system, hidden=(64, 64), data=x).to(device)
    train_continuous_flow(system, flow, x, n_iterations=2000, batch_size=256, lr=2e-3, progress=False, device=device)
    train_sigma_f(flow, progress=False)
    exact_p = reference_estimates("four_wells_2d")["exact"]["p_a"]
    print(f"\nPart 3: four_wells_2d, exact P(a < -1.5) = {exact_p:.4f}; flow [64, 64], 20 RK4 steps, trained on "
          f"4 x 1000 equal-weight points around the minima; {n} samples per method\n")
    runs = [("cnf-exact (importance)", "cnf-exact", {"batch_size": 1000}), *FP_IS_RUNS,
            ("fp-is, multistep, 40 steps", "fp-is", {"ode_steps": 40})]
    comparison_table(system, flow, runs, n, exact_p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=525, help="dimension of part 1 (default: 525)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512, 512], help="velocity MLP hidden sizes")
    parser.add_argument("--steps", type=int, default=20, help="RK4 steps (default: 20)")
    parser.add_argument("--batch", type=int, default=256, help="batch of the FP and Hutchinson timings")
    parser.add_argument("--exact-samples", type=int, default=2, help="samples of the exact-Jacobian timing")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--n", type=int, default=4000, help="samples per method in part 2")
    parser.add_argument("--iterations", type=int, default=3000, help="flow-matching steps in part 2")
    parser.add_argument("--gmm-hidden", type=int, nargs="+", default=[128, 128, 128], help="part 2 velocity MLP")
    parser.add_argument("--gmm-steps", type=int, default=20, help="part 2 RK4 steps")
    parser.add_argument("--four-wells-n", type=int, default=20000, help="samples per method in part 3")
    parser.add_argument("--skip-cost", action="store_true", help="skip part 1")
    parser.add_argument("--skip-gmm", action="store_true", help="skip part 2")
    parser.add_argument("--skip-four-wells", action="store_true", help="skip part 3")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_cost:
        cost_per_weight(args.dim, tuple(args.hidden), args.steps, args.batch, args.exact_samples, args.repeats,
                        args.device)
    if not args.skip_gmm:
        gmm10_comparison(args.n, tuple(args.gmm_hidden), args.gmm_steps, args.iterations, args.device)
    if not args.skip_four_wells:
        four_wells_comparison(args.four_wells_n, args.device)


if __name__ == "__main__":
    main()
