"""Flow perturbation: unbiased weights without the Jacobian, and the samplers built on them.

The flows here are deliberately wrong: closed-form velocity fields whose samples look nothing like
the target, or (Gaussian mixtures) flows trained on data with the wrong mode weights. Truth comes from quadrature (1D mixture), equipartition
(a translation-invariant harmonic cluster), the exact mixture (10D; 1000D is marked slow) or, for a linear
velocity field, Gaussian integrals (log ω is then a quadratic form of (x_T, ε): its moments are closed-form).
Unbiased estimators must agree with the truth within their own errors; single-probe Hutchinson weights must not.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import integrate
from torch import nn

import boltzflow as bf
from boltzflow.energy.base import Energy
from boltzflow.energy.function import FunctionEnergy
from boltzflow.energy.gaussian_mixture import GaussianMixtureEnergy
from boltzflow.flows.continuous import ContinuousFlow, build_continuous_flow
from boltzflow.flows.continuous_perturbation import flow_perturbation, noise_dim, stretch_delta_s
from boltzflow.flows.continuous_training import train_continuous_flow, train_sigma_f
from boltzflow.flows.perturbation_target import ExtendedTarget
from boltzflow.samplers.flow_perturbation import refresh_move
from boltzflow.samplers.flow_perturbation_smc import refresh_schedule, sigmoid_schedule, systematic_resample


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread is much faster (and immune to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _z(estimate, exact: float) -> float:
    return (estimate.value - exact) / estimate.error


# ---------------------------------------------------------------- the identity behind the stretch estimator


@pytest.mark.parametrize("d", [2, 5, 10])
def test_mean_of_alpha_to_the_minus_d_is_the_inverse_determinant(d):
    g = torch.Generator().manual_seed(d)
    noise = (0.3 / math.sqrt(d)) * torch.randn(d, d, generator=g, dtype=torch.float64)
    jac = 1.05 * (torch.eye(d, dtype=torch.float64) + noise)  # near the identity, volume not preserved
    eps = torch.randn(200_000, d, generator=g, dtype=torch.float64)
    x0 = torch.randn(1, d, generator=g, dtype=torch.float64).expand_as(eps)
    # a linear map: the central difference is exact and α² = ‖Jε‖²/‖ε‖²
    w = torch.exp(stretch_delta_s(lambda y: y @ jac.T, x0, eps))
    exact = 1.0 / abs(float(torch.linalg.det(jac)))
    se = float(w.std()) / math.sqrt(len(w))
    assert abs(float(w.mean()) - exact) < 4 * se
    assert se < 0.02 * exact and abs(exact - 1) > 10 * se  # a sharp test, and J is not volume-preserving


# ---------------------------------------------------------------- a deliberately wrong flow on a 1D two-mode target


class TanhField(nn.Module):
    """``v(s) = a s + c tanh(w (s − s0))``: its divergence depends on position (so Hutchinson noise does too)."""

    def __init__(self, a: float, c: float, w: float, s0: float) -> None:
        super().__init__()
        self.a, self.c, self.w, self.s0 = a, c, w, s0

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.a * s + self.c * torch.tanh(self.w * (s - self.s0))


MIX = GaussianMixtureEnergy([[-2.0], [1.5]], [0.5, 0.7], [1.0, 3.0])
OBSERVABLES = {"x": lambda x: x[:, 0], "x2": lambda x: x[:, 0] ** 2, "pA": lambda x: (x[:, 0] < 0).astype(float)}


def _quadrature(energy: Energy, lo: float = -12.0, hi: float = 12.0) -> dict[str, float]:
    """⟨x⟩, ⟨x²⟩, P(x < 0) and log Z of a 1D energy by adaptive quadrature."""

    def density(x: float) -> float:
        return float(np.exp(-energy.evaluate(np.array([[x]]), need_gradient=False).energy[0]))

    def quad(f, a: float, b: float) -> float:
        return integrate.quad(lambda x: f(x) * density(x), a, b, points=[-2.0, 0.0, 1.5] if a < 0 < b else None,
                              limit=200, epsabs=0, epsrel=1e-11)[0]

    z = quad(lambda x: 1.0, lo, hi)
    return {"x": quad(lambda x: x, lo, hi) / z, "x2": quad(lambda x: x * x, lo, hi) / z,
            "pA": quad(lambda x: 1.0, lo, 0.0) / z, "log_z": math.log(z)}


def _toy_flow() -> ContinuousFlow:
    flow = ContinuousFlow(1, TanhField(a=0.5, c=0.5, w=2.0, s0=-0.8), n_steps=20, sigma_f_hidden=(16, 16))
    flow.scale.fill_(2.5)
    return flow


@pytest.fixture(scope="module")
def toy():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures are set up before the per-test one_thread
    torch.manual_seed(0)
    system = bf.System(name="mix1d", energy=MIX, temperature=1.0, x0=[1.5])
    flow = _toy_flow()
    train_sigma_f(flow, n_pairs=2048, n_iterations=600, progress=False)
    torch.set_num_threads(threads)
    return system, flow, _quadrature(MIX)


def _estimates(samples: bf.SampleSet) -> dict:
    return {k: bf.estimate.expectation(samples, f, n_bootstrap=40) for k, f in OBSERVABLES.items()}


def test_quadrature_truth_matches_the_mixture():
    truth = _quadrature(MIX)
    w, m, s = MIX.weights, MIX.means[:, 0], MIX.sigmas
    assert truth["x"] == pytest.approx(w @ m, abs=1e-9) and truth["x2"] == pytest.approx(w @ (m**2 + s**2), abs=1e-9)
    assert truth["pA"] == pytest.approx(MIX.coordinate_cdf(0, 0.0), abs=1e-9) and abs(truth["log_z"]) < 1e-9


def test_fp_weights_match_quadrature_and_single_probe_hutchinson_is_biased(toy):
    system, flow, truth = toy
    runs = {
        "multistep": bf.sample(system, "fp-is", n=20000, seed=13, model=flow, progress=False),  # the default
        # the infinite-variance estimator on the flow's own latent: widened latents make its tail heavier
        # (relative ESS 0.13 with defensive=0, 0.05 with the default 0.1; the others gain 0.22 -> 0.24)
        "perturbed": bf.sample(system, "fp-is", n=20000, seed=1, model=flow, estimator="perturbed", defensive=0.0,
                               progress=False),
        "stretch": bf.sample(system, "fp-is", n=20000, seed=2, model=flow, estimator="stretch", progress=False),
        "exact": bf.sample(system, "cnf-exact", n=20000, seed=3, model=flow, batch_size=20000, progress=False),
        "hutchinson": bf.sample(system, "cnf-hutchinson", n=20000, seed=4, model=flow, probe="gaussian",
                                batch_size=20000, progress=False),
        # the same biased weights on the extended space (x_T, ε), ε the probe: what FP-SMC compares against
        "hutchinson-extended": bf.sample(system, "fp-is", n=20000, seed=8, model=flow, estimator="hutchinson",
                                         progress=False),
    }
    results = {name: _estimates(samples) for name, samples in runs.items()}
    assert runs["multistep"].metadata["estimator"] == "multistep"
    assert runs["multistep"].metadata["ode_passes_per_sample"] == 2
    for name in ("multistep", "perturbed", "stretch", "exact"):
        for key, estimate in results[name].items():
            assert abs(_z(estimate, truth[key])) < 3.5, (name, key, estimate, truth[key])
        assert bf.estimate.relative_ess(runs[name]) > 0.05
    # the flow is far from the target: unweighted, its samples are plainly wrong
    plain = {k: float(np.mean(f(runs["exact"].x))) for k, f in OBSERVABLES.items()}
    assert abs(plain["pA"] - truth["pA"]) > 0.05 and abs(plain["x2"] - truth["x2"]) > 0.5
    # exact-Jacobian and flow-perturbation weights agree with each other
    for key in OBSERVABLES:
        for name in ("multistep", "perturbed"):
            a, b = results["exact"][key], results[name][key]
            assert abs(a.value - b.value) < 3.5 * math.hypot(a.error, b.error), (name, key)
    # exp of an unbiased log-density estimate is not an unbiased weight: confidently wrong
    for name in ("hutchinson", "hutchinson-extended"):
        assert _z(results[name]["pA"], truth["pA"]) > 5 and _z(results[name]["x"], truth["x"]) < -5, name
        assert runs[name].metadata["normalized_proposal"] is False
    for key in OBSERVABLES:  # one distribution, two routes
        a, b = results["hutchinson"][key], results["hutchinson-extended"][key]
        assert abs(a.value - b.value) < 4 * math.hypot(a.error, b.error), (key, a, b)
    # E[ω] = Z = 1 for the normalised mixture
    for name in ("multistep", "perturbed", "exact"):
        assert abs(_z(bf.estimate.log_partition_function(runs[name]), truth["log_z"])) < 3.5


def test_perturbed_weights_are_unbiased_for_any_sigma_f(toy):
    system, trained, truth = toy
    flow = _toy_flow()  # σ_F untrained, constant and 3× too narrow: more variance, no bias
    flow.sigma_f.unit.fill_(float(trained.sigma_f.unit) / 3)
    samples = bf.sample(system, "fp-is", n=20000, seed=5, model=flow, estimator="perturbed", progress=False)
    estimates = _estimates(samples)
    for key, estimate in estimates.items():
        assert abs(_z(estimate, truth[key])) < 3.5, (key, estimate)
    assert abs(_z(bf.estimate.log_partition_function(samples), truth["log_z"])) < 3.5
    assert samples.metadata["ode_passes_per_sample"] == 2


def test_fp_chains_and_smc_match_quadrature(toy):
    system, flow, truth = toy
    chains = bf.sample(system, "fp", n=2000, seed=6, model=flow, n_chains=16, warmup=50, progress=False)
    assert chains.correlated and set(np.unique(chains.chain)) == set(range(16))
    assert np.all(chains.log_weights == 0) and 0.1 < chains.metadata["acceptance_rate"] < 1
    # errors from the spread of 8 replicas have heavy tails (t with 7 degrees of freedom; multistep, seeds
    # 7-14: log Z at -4.5 sigma for seed 7, within 3.4 sigma for the rest): every estimate is checked on
    # three seeds, of which at least two must be within 3.5 sigma — a biased estimator fails all three
    runs = [bf.sample(system, "fp-smc", n=2000, seed=seed, model=flow, n_temperatures=10, progress=False)
            for seed in (8, 9, 10)]
    smc = runs[0]
    assert smc.correlated and smc.metadata["normalized_proposal"] and set(np.unique(smc.chain)) == set(range(8))
    assert smc.metadata["n_resampling_events"] > 0 and smc.metadata["n_unique"] > 500
    assert smc.metadata["estimator"] == chains.metadata["estimator"] == "multistep"
    for key, estimate in _estimates(chains).items():
        assert abs(_z(estimate, truth[key])) < 3.5, ("fp", key, estimate)
    z_smc = {key: [_z(_estimates(run)[key], truth[key]) for run in runs] for key in OBSERVABLES}
    z_smc["log_z"] = [_z(bf.estimate.log_partition_function(run), truth["log_z"]) for run in runs]
    for key, z in z_smc.items():
        assert sum(abs(v) < 3.5 for v in z) >= 2, ("fp-smc", key, z)


def test_flow_perturbation_rejects_bad_input(toy):
    system, flow, _ = toy
    z = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown flow-perturbation estimator"):
        flow_perturbation(flow, z, z, estimator="jacobian")
    with pytest.raises(ValueError, match="shape"):
        flow_perturbation(flow, z, torch.zeros(3, 2, dtype=torch.float64), estimator="perturbed")
    with pytest.raises(ValueError, match=r"\(batch, 20\)"):  # multistep: one noise vector per RK4 step
        flow_perturbation(flow, z, z)
    assert noise_dim(flow, "multistep", 7) == 7 and noise_dim(flow, "stretch", 7) == 1
    with pytest.raises(ValueError, match="step_noise"):
        flow_perturbation(flow, z, torch.zeros(3, 20, dtype=torch.float64), step_noise=0.0)
    with pytest.raises(ValueError, match="n_steps"):
        flow_perturbation(flow, z, z, n_steps=0)
    with pytest.raises(ValueError, match="step_noise"):
        bf.sample(system, "fp-is", n=10, model=flow, step_noise=-1.0, progress=False)
    with pytest.raises(ValueError, match="sigma_b"):
        bf.sample(system, "fp", n=10, model=flow, sigma_b=0.0, progress=False)
    with pytest.raises(TypeError, match="no option"):
        bf.sample(system, "fp-smc", n=10, model=flow, temperatures=3)


# ---------------------------------------------------------------- failures: zero weight, counted, never accepted


class WalledMixture(Energy):
    """The 1D mixture with failed evaluations (NaN) beyond a wall; counts calls and can be interrupted."""

    def __init__(self, wall: float = 2.0, interrupt_after: float = math.inf) -> None:
        super().__init__(1)
        self.wall, self.interrupt_after, self.calls = wall, interrupt_after, 0

    def _evaluate(self, x: np.ndarray, need_gradient: bool):
        self.calls += 1
        if self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        u, g = MIX._evaluate(x, need_gradient)
        return np.where(x[:, 0] > self.wall, np.nan, u), g


def test_failed_energies_get_zero_weight_and_are_never_accepted(toy):
    _, flow, _ = toy
    energy = WalledMixture()
    system = bf.System(name="walled", energy=energy, temperature=1.0, x0=[1.5])
    truth = _quadrature(WalledMixture(), hi=2.0)  # the target is the mixture cut at the wall
    weighted = bf.sample(system, "fp-is", n=10000, seed=8, model=flow, progress=False)
    assert weighted.n_failed > 100
    assert abs(_z(bf.estimate.expectation(weighted, OBSERVABLES["pA"], n_bootstrap=40), truth["pA"])) < 3.5
    chains = bf.sample(system, "fp", n=800, seed=9, model=flow, n_chains=8, warmup=20, progress=False)
    assert chains.n_failed == 0 and chains.metadata["n_nonfinite_proposals"] > 0 and chains.x.max() <= 2.0
    smc = bf.sample(system, "fp-smc", n=400, seed=10, model=flow, n_temperatures=5, progress=False)
    assert smc.metadata["n_nonfinite_proposals"] > 0 and np.isfinite(smc.log_weights).any()


@pytest.mark.parametrize("sampler, options", [("fp-smc", {"n_temperatures": 6}), ("fp", {"n_chains": 4, "warmup": 5}),
                                              ("fp-is", {"batch_size": 50}),
                                              ("fp-smc", {"n_temperatures": 6, "gradient_steps": 1})])  # fp-is: one energy call per batch
def test_interrupted_runs_resume_to_the_same_samples(toy, tmp_path, sampler, options):
    _, flow, _ = toy
    run = dict(n=200, seed=11, model=flow, progress=False, **options)
    reference = bf.sample(bf.System(name="walled", energy=WalledMixture(), temperature=1.0, x0=[1.5]), sampler, **run)
    ckpt = tmp_path / "ckpt.npz"
    system = bf.System(name="walled", energy=WalledMixture(interrupt_after=2 if sampler == "fp-is" else 9 if "gradient_steps" in options else 4),
                       temperature=1.0, x0=[1.5])
    with pytest.raises(KeyboardInterrupt):
        bf.sample(system, sampler, **run, checkpoint=ckpt, checkpoint_seconds=0.0)
    assert ckpt.exists()
    system.energy.interrupt_after = math.inf
    resumed = bf.sample(system, sampler, **run, checkpoint=ckpt)
    assert np.array_equal(resumed.x, reference.x) and np.array_equal(resumed.log_weights, reference.log_weights)


# ---------------------------------------------------------------- centre of mass removed: a harmonic cluster


class LinearField(nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.rate * s


def test_fp_on_a_translation_invariant_cluster_gives_equipartition_and_z():
    k = 2.0  # u = k/2 Σ|x_i − x̄|², 3 particles in 2D: 4 internal harmonic coordinates

    def energy(x: torch.Tensor) -> torch.Tensor:
        p = x.reshape(x.shape[0], 3, 2)
        return 0.5 * k * ((p - p.mean(1, keepdim=True)) ** 2).sum((1, 2))

    system = bf.System(name="cluster", energy=FunctionEnergy(energy, dim=6), temperature=1.0, x0=np.zeros(6),
                       particles=(3, 2))
    flow = ContinuousFlow(6, LinearField(-0.2), particles=(3, 2), n_steps=10)  # q = N(0, e^0.4 I): too wide
    samples = bf.sample(system, "fp-is", n=20000, seed=12, model=flow, progress=False)
    assert np.allclose(samples.x.reshape(-1, 3, 2).mean(1), 0.0, atol=1e-12)
    mean_u = bf.estimate.expectation(samples, samples.energies, n_bootstrap=40)
    assert abs(_z(mean_u, 2.0)) < 3.5  # equipartition: 4 quadratic degrees of freedom × 1/2
    log_z = bf.estimate.log_partition_function(samples, n_bootstrap=40)
    assert abs(_z(log_z, 2 * math.log(2 * math.pi / k))) < 3.5  # per unit volume of the centred subspace


# ---------------------------------------------------------------- a linear, anisotropic flow: exact moments of ω


class DiagonalField(nn.Module):
    """``v(s) = diag(rates) s``: RK4 maps are linear, so ``log ω`` is a quadratic form of ``(x_T, ε)``."""

    def __init__(self, rates: list[float]) -> None:
        super().__init__()
        self.register_buffer("rates", torch.tensor(rates, dtype=torch.float64))

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return s * self.rates


TARGET_MEAN = torch.tensor([0.4, -0.3], dtype=torch.float64)
TARGET_PRECISION = torch.tensor([[2.5, 0.1], [0.1, 0.25]], dtype=torch.float64)


def _linear_flow(n_steps: int = 20) -> ContinuousFlow:
    """``q = N(loc, diag(0.8, 3.0)²)``: wider than the target everywhere (exact weights have finite
    variance) and anisotropic (``J_F = diag(1.25, 0.33)``)."""
    flow = ContinuousFlow(2, DiagonalField([-1.0, 1.0]), n_steps=n_steps, sigma_f_hidden=(4,))
    flow.loc.copy_(torch.tensor([0.2, 0.1]))
    flow.scale.copy_(torch.tensor([0.8 / math.e, 3.0 * math.e]))
    last = flow.sigma_f.net.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()  # σ_F = unit·(1 + 1e−6), a constant
    return flow


def _weight_moments(flow: ContinuousFlow, estimator: str, mean: torch.Tensor, precision: torch.Tensor,
                    **options) -> tuple[float, float]:
    """``log E[ω]`` and ``log E[ω²]`` (``inf`` if infinite) for ``u = ½(x − mean)ᵀ precision (x − mean)``, exactly.

    ``log ω(y) = c + bᵀy − ½ yᵀKy`` for ``y = (x_T, ε) ~ N(0, I)`` (read off by autograd; the
    function is checked to be that quadratic), so ``E[ω^p] = e^{pc} det(I + pK)^{−1/2}
    exp(½ p² bᵀ(I + pK)^{−1} b)`` when ``I + pK`` is positive definite, else infinite.
    """
    d, m = flow.latent_dim, noise_dim(flow, estimator, options.get("n_steps"))

    def log_w(y: torch.Tensor) -> torch.Tensor:
        y0, delta_s = flow_perturbation(flow, y[None, :d], y[None, d:], estimator, differentiable=True, **options)
        x, chart = flow.to_configuration_with_log_det(y0)
        r = x[0] - mean
        return -0.5 * r @ precision @ r + delta_s[0] + chart[0] - flow.latent_log_prob(y[None, :d])[0]

    origin = torch.zeros(d + m, dtype=torch.float64)
    c = float(log_w(origin).detach())
    b = torch.autograd.functional.jacobian(log_w, origin)
    k = -torch.autograd.functional.hessian(log_w, origin)
    y = torch.randn(d + m, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(log_w(y).detach()) == pytest.approx(c + float(b @ y) - 0.5 * float(y @ k @ y), abs=1e-8)
    moments = []
    for p in (1, 2):
        a = torch.eye(d + m, dtype=torch.float64) + p * k
        if float(torch.linalg.eigvalsh(a).min()) <= 0:
            moments.append(math.inf)
            continue
        moments.append(p * c - 0.5 * float(torch.logdet(a)) + 0.5 * p**2 * float(b @ torch.linalg.solve(a, b)))
    return moments[0], moments[1]


def test_linear_flow_weights_are_exactly_unbiased_and_multistep_variance_is_finite():
    log_z = math.log(2 * math.pi) - 0.5 * math.log(float(torch.linalg.det(TARGET_PRECISION)))
    flow = _linear_flow()
    target = (TARGET_MEAN, TARGET_PRECISION)
    # multistep: E[ω] = Z for any steps and noise; E[ω²] finite iff every step's s_min(J_F_j)² > ½:
    # J_F_j = diag(R(−h), R(h)) with R the RK4 polynomial of e^x, R(−1/3)² = 0.51, R(−1/2)² = 0.37
    for options, finite in (({}, True), ({"n_steps": 40}, True), ({"n_steps": 3}, True), ({"n_steps": 2}, False),
                            ({"n_steps": 3, "step_noise": 0.5}, None)):
        log_mean, log_second = _weight_moments(flow, "multistep", *target, **options)
        assert log_mean == pytest.approx(log_z, abs=1e-9), options
        assert finite is None or math.isfinite(log_second) is finite, options
    # with the flow's own (noise-free) density as target, the relative variance is the noise's: ∝ h
    sd = flow.scale * torch.exp(-flow.velocity.rates)
    own = (flow.loc, torch.diag(sd**-2))
    variances = [math.expm1(second - 2 * mean) for mean, second in
                 (_weight_moments(flow, "multistep", *own, n_steps=n) for n in (20, 40))]
    assert 0 < variances[1] < variances[0] and variances[1] / variances[0] == pytest.approx(0.5, abs=0.05), variances
    # perturbed: unbiased too, but E[ω²] < ∞ only while σ_F < √2 σ_B s_min(J_F), J_F = diag(e^λ / scale)
    singular = torch.exp(flow.velocity.rates) / flow.scale
    bound = math.sqrt(2) * flow.sigma_b * float(singular.min())
    for factor, finite in ((0.9, True), (1.1, False)):
        flow.sigma_f.unit.fill_(factor * bound)
        log_mean, log_second = _weight_moments(flow, "perturbed", *target)
        assert log_mean == pytest.approx(log_z, abs=1e-9) and math.isfinite(log_second) is finite, factor
    # a σ_F matched to the average residual (what training does) is far beyond the bound here
    assert flow.sigma_b * float(singular.pow(2).mean().sqrt()) > 1.5 * bound


def test_refresh_move_redraws_the_same_fraction_of_the_longer_multistep_noise():
    system = bf.System(name="gauss2d", energy=FunctionEnergy(lambda x: 0.5 * (x**2).sum(1), dim=2), temperature=1.0,
                       x0=np.zeros(2))
    target = ExtendedTarget(system, _linear_flow(n_steps=20))
    assert (target.dim, target.noise_dim) == (2, 40)
    rng = np.random.default_rng(0)
    z, eps = rng.standard_normal((64, 2)), rng.standard_normal((64, 40))
    x, u, log_w = target.evaluate(z, eps)
    z_new, eps_new, *_, accepted, _ = refresh_move(target, z, eps, x, u, log_w, 0.0, 1, rng)  # β = 0: all accepted
    assert accepted.all()
    assert np.all((z_new != z).sum(1) == 1) and np.all((eps_new != eps).sum(1) == 20)  # K of d, K·N of N·d


# ---------------------------------------------------------------- SMC building blocks


def test_smc_schedules_and_systematic_resampling():
    betas = sigmoid_schedule(30, 0.01)
    assert betas[0] == pytest.approx(0.01) and betas[-1] == 1.0 and np.all(np.diff(betas) > 0)
    assert np.diff(betas)[0] < np.diff(betas)[15] > np.diff(betas)[-1]  # slow at both ends
    k = refresh_schedule(10, 100, 2, dim=50)
    assert k[0] == 50 and k[-1] == 2 and np.all(np.diff(k) <= 0)
    p = np.array([0.5, 0.25, 0.125, 0.125, 0.0])
    log_p = np.log(p, where=p > 0, out=np.full(5, -np.inf))
    counts = np.zeros(5)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        counts += np.bincount(systematic_resample(log_p, rng), minlength=5)
    assert np.allclose(counts / counts.sum(), p, atol=0.005) and counts[-1] == 0
    # systematic: each particle is copied floor(N p) or ceil(N p) times
    assert set(np.bincount(systematic_resample(log_p, rng), minlength=5)) <= {0, 1, 2, 3}


# ---------------------------------------------------------------- the Gaussian-mixture systems and their exact reference


@pytest.mark.parametrize("name, dim", [("gmm10", 10), ("gmm1000", 1000)])
def test_gaussian_mixture_systems_and_exact_reference(name, dim):
    from boltzflow.reference_data import reference_estimates

    system = bf.load_system(name)
    energy = system.energy
    assert system.dim == dim and np.allclose(energy.weights, [0.25, 0.75])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, dim)) + np.where(rng.random(5) < 0.5, -4.0, 4.0)[:, None] * np.eye(dim)[0]
    result = energy.evaluate(x)
    log_p = np.logaddexp(*(np.log(w) - 0.5 * ((x - mean) ** 2).sum(1) - 0.5 * dim * math.log(2 * math.pi)
                           for w, mean in zip(energy.weights, energy.means)))  # unit-variance components
    assert np.allclose(result.energy, -log_p, rtol=1e-12)  # u = −log p of the normalised mixture: Z = 1
    step = 1e-6 * np.eye(dim)[3]
    numeric = (energy.evaluate(x + step, False).energy - energy.evaluate(x - step, False).energy) / 2e-6
    assert np.allclose(result.gradient[:, 3], numeric, atol=1e-6)
    exact = reference_estimates(name)["exact"]
    assert exact["p_a"] == pytest.approx(energy.coordinate_cdf(0, 0.0)) and exact["log_z"] == 0.0
    draws, _ = energy.sample(8000, np.random.default_rng(1))
    u = energy.evaluate(draws, need_gradient=False).energy
    assert abs(u.mean() - exact["mean_energy"]) < 4 * u.std() / math.sqrt(len(u))
    assert abs(np.mean(system.states["A"](draws)) - exact["p_a"]) < 0.02
    assert exact["delta_f_b_minus_a"] == pytest.approx(-math.log(3.0), abs=1e-4)


# ---------------------------------------------------------------- Gaussian mixtures, trained flows


def test_gmm10_fp_smc_mode_fraction_from_a_mis_weighted_flow():
    system = bf.load_system("gmm10")
    exact = system.energy.coordinate_cdf(0, 0.0)
    x, _ = system.energy.sample(20000, np.random.default_rng(0), weights=[1, 1])  # the flow learns 1:1, not 1:3
    torch.manual_seed(0)
    flow = build_continuous_flow(system, hidden=(64, 64, 64), n_steps=10, data=x)
    train_continuous_flow(system, flow, x, n_iterations=2000, batch_size=256, lr=2e-3, lr_final=1e-5, progress=False)
    train_sigma_f(flow, progress=False)
    plain = np.mean(system.states["A"](flow.to_configuration(flow.decode(flow.sample_latent(4000))).detach().numpy()))
    assert abs(plain - 0.5) < 0.05  # the flow itself has the wrong mode fraction
    smc = bf.sample(system, "fp-smc", n=2000, seed=0, model=flow, n_temperatures=20, progress=False)
    fraction = bf.estimate.expectation(smc, lambda y: system.states["A"](y).astype(float))
    assert abs(fraction.value - exact) < 0.03 and abs(_z(fraction, exact)) < 3.5


@pytest.mark.slow
def test_gmm1000_fp_smc_mode_fraction_from_a_mis_weighted_flow():
    """D = 1000 (≈ 10 min on one core): the flow learns 1:1; FP-SMC with 40 temperatures recovers 1:3 within its
    error or is flagged — never confidently wrong. With the perturbed weights seed 0 was right (0.21 ± 0.07) and seed 1
    flagged; with the multistep default (10 000 noise coordinates at 10 RK4 steps) both seeds are flagged at 40
    temperatures (measured 2026-12-08): a longer anneal is needed for a reliable estimate at this dimension."""
    system = bf.load_system("gmm1000")
    exact = system.energy.coordinate_cdf(0, 0.0)
    x, _ = system.energy.sample(20000, np.random.default_rng(0), weights=[1, 1])
    torch.manual_seed(0)
    flow = build_continuous_flow(system, hidden=(256, 256, 256), n_steps=10, data=x)
    train_continuous_flow(system, flow, x, n_iterations=3000, batch_size=256, lr=2e-3, lr_final=1e-5, progress=False)
    train_sigma_f(flow, progress=False)
    for seed in (0, 1):
        smc = bf.sample(system, "fp-smc", n=1000, seed=seed, model=flow, n_temperatures=40, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bf.estimate.LowESSWarning)
            fraction = bf.estimate.expectation(smc, lambda y: system.states["A"](y).astype(float))
        if fraction.reliable:
            assert fraction.error < 0.1 and abs(_z(fraction, exact)) < 3.5, (seed, fraction)


def test_defensive_latent_keeps_weights_exact_and_tames_a_narrow_flows_tail():
    """A flow N(0, 1) for a target N(0, 1.8²): weights p/q have k = 1 − 1/1.8² = 0.69 (infinite variance);
    with 10 % of the latents from N(0, 1.5²) the tail comes from the wide part, k = 0.31 — still exact."""
    sd = 1.8
    system = bf.System.from_energy(lambda x: 0.5 * (x[:, 0] / sd) ** 2, dim=1)
    log_z, mean_x2 = math.log(math.sqrt(2 * math.pi) * sd), sd**2
    flow = build_continuous_flow(system, hidden=(8,), n_steps=4,
                                 data=np.random.default_rng(0).normal(size=(20_000, 1)))
    with torch.no_grad():  # velocity exactly zero and no standardisation: q = N(0, 1)
        flow.loc.zero_()
        flow.scale.fill_(1.0)
        for layer in flow.velocity.modules():
            if isinstance(layer, nn.Linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
    for sampler in ("cnf-exact", "fp-is"):
        k = {}
        for defensive in (0.0, 0.1):
            samples = bf.sample(system, sampler, n=20_000, seed=3, model=flow, defensive=defensive, progress=False)
            assert samples.metadata["defensive"] == defensive
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", bf.estimate.LowESSWarning)
                x2 = bf.estimate.expectation(samples, lambda v: v[:, 0] ** 2)
                lz = bf.estimate.log_partition_function(samples)
            k[defensive] = x2.pareto_k
            if defensive:  # exact weights, light tail: right within the error, not flagged
                assert x2.reliable and lz.reliable, (sampler, x2, lz)
                assert abs(_z(x2, mean_x2)) < 3.5 and abs(_z(lz, log_z)) < 3.5, (sampler, x2, lz)
        assert k[0.0] > 0.55 and k[0.1] < 0.45, (sampler, k)
    with pytest.raises(ValueError, match="defensive"):
        bf.sample(system, "cnf-exact", n=10, model=flow, defensive=1.0, progress=False)
