"""MCMC with flow proposals (IMH, i-SIR), HMC and neutra-MCMC: exactness against known answers.

Every flow here is deliberately poor (untrained, its standardisation fitted to a Gaussian of the
wrong width), so the tests show that the chains are exact *despite* the flow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2, norm

import boltzflow as bf
from boltzflow.cli import main
from boltzflow.flows import build_flow
from boltzflow.flows.distributions import BaseDistribution, FlowDistribution
from boltzflow.flows.models import Standardize
from boltzflow.samplers.checkpoint import CheckpointError


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread is much faster (and immune to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _z(estimate, exact: float) -> float:
    return (estimate.value - exact) / estimate.error


def _gaussian_data(std, n: int = 2000, seed: int = 0, mean=0.0) -> torch.Tensor:
    """Data for a flow's standardisation: a Gaussian of the given (wrong) widths."""
    std = torch.as_tensor(std, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, std.numel(), generator=g, dtype=torch.float64)


def _poor_flow(system: bf.System, std, perturb: float = 0.0) -> FlowDistribution:
    """Untrained affine flow: q = N(0, diag(std²)) of the data, made nonlinear by random weights."""
    torch.manual_seed(0)
    flow = build_flow(system, kind="affine", n_layers=2, hidden=(8,), data=_gaussian_data(std))
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in flow.parameters():
                parameter.add_(perturb * torch.randn(parameter.shape, generator=g, dtype=parameter.dtype))
    return flow


# ---------------------------------------------------------------- (a) 2D Gaussian mixture

MIX_MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
MIX_STDS = torch.tensor([[0.4, 1.5], [0.4, 0.3]], dtype=torch.float64)  # left mode broad in y
MIX_WEIGHTS = torch.tensor([0.4, 0.6], dtype=torch.float64)


def _mixture() -> bf.System:
    def energy(x: torch.Tensor) -> torch.Tensor:
        z = (x[:, None, :] - MIX_MEANS) / MIX_STDS
        log_pdf = torch.log(MIX_WEIGHTS) - torch.log(MIX_STDS).sum(-1) - 0.5 * (z**2).sum(-1)
        return -torch.logsumexp(log_pdf, dim=1)

    return bf.System.from_energy(energy, dim=2, name="mixture", x0=[2.0, 0.0])


def _right_mode_weight() -> float:
    """Exact P(x1 > 0) (the right mode's weight plus the left mode's negligible tail)."""
    w, m, s = MIX_WEIGHTS.numpy(), MIX_MEANS[:, 0].numpy(), MIX_STDS[:, 0].numpy()
    return float((w * norm.sf(0.0, loc=m, scale=s)).sum())


def _right(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] > 0).astype(float)


def test_flow_mcmc_recovers_mode_weight_where_importance_sampling_fails():
    """A flow too wide in x and too narrow in y: the broad left mode's y-tails are nearly unseen.

    Importance sampling then underweights the left mode far beyond its own error bar, even with
    as many energy evaluations as the chains use; IMH and i-SIR with one MALA step per iteration
    are exact and their autocorrelation errors cover the truth.
    """
    system = _mixture()
    flow = _poor_flow(system, std=[2.5, 0.3])
    exact = _right_mode_weight()
    # 500 stored states per chain: the chains then agree (split R-hat about 1.03; with 190 per chain
    # it scatters around the 1.1 above which chain estimates are flagged)
    common = {"n": 8000, "seed": 0, "model": flow, "n_chains": 16, "warmup": 200, "local_steps": 1,
              "local_step_size": 0.05, "progress": False}
    imh = bf.sample(system, sampler="imh", **common)
    isir = bf.sample(system, sampler="isir", n_proposals=4, **common)
    for samples in (imh, isir):
        meta = samples.metadata
        assert samples.correlated and not samples.is_weighted and not meta["normalized_proposal"]
        assert set(np.unique(samples.chain)) == set(range(16)) and len(samples) == 8000
        assert 0.05 < meta["global_acceptance_rate"] < 0.6, meta
        assert 0.4 < meta["local_acceptance_rate"] < 0.75, meta
        assert meta["local_step_sizes"] == meta["local_step_sizes_warmup_end"]  # frozen after warm-up
        assert min(meta["local_step_sizes"]) > 0.05 * 1.5  # and adapted during it
        estimate = bf.estimate.expectation(samples, _right)
        assert estimate.reliable and "autocorrelation" in estimate.method
        assert abs(_z(estimate, exact)) < 3.0, (meta["sampler"], estimate, exact)
    # plain importance sampling with the same flow and at least the chains' energy evaluations
    n_evaluations = (8000 + 200 * 16) * 2
    weighted = bf.sample(system, sampler="flow", n=n_evaluations, seed=0, model=flow, progress=False)
    naive = bf.estimate.expectation(weighted, _right)
    assert _z(naive, exact) > 3.0, naive  # confidently wrong: the error bar misses the truth
    chain_error = bf.estimate.expectation(imh, _right).error
    assert abs(naive.value - exact) > 2.0 * chain_error


# ---------------------------------------------------------------- (b) exactness on a 1D target

def _one_d_mixture() -> bf.System:
    def energy(x: torch.Tensor) -> torch.Tensor:
        a = math.log(0.3) + torch.distributions.Normal(-1.0, 0.5).log_prob(x[:, 0])
        b = math.log(0.7) + torch.distributions.Normal(1.5, 0.8).log_prob(x[:, 0])
        return -torch.logaddexp(a, b)

    return bf.System.from_energy(energy, dim=1, name="mixture_1d", x0=[0.0])


def _gaussian_flow_1d(loc: float, scale: float) -> FlowDistribution:
    """q = N(loc, scale²) as a flow (coupling layers need 2 features: a standardisation alone)."""
    standardize = Standardize(1)
    standardize.loc.fill_(loc)
    standardize.scale.fill_(scale)
    return FlowDistribution(BaseDistribution(1), standardize).double()


@pytest.mark.parametrize("sampler,options", [("imh", {}), ("isir", {"n_proposals": 3})])
def test_chain_histogram_matches_exact_bin_probabilities(sampler, options):
    system = _one_d_mixture()
    flow = _gaussian_flow_1d(0.5, 2.0)
    samples = bf.sample(system, sampler=sampler, n=20000, seed=3, model=flow, n_chains=200, thin=10, warmup=50,
                        progress=False, **options)
    edges = np.concatenate([[-np.inf], np.linspace(-2.5, 3.5, 25), [np.inf]])
    cdf = 0.3 * norm.cdf(edges, -1.0, 0.5) + 0.7 * norm.cdf(edges, 1.5, 0.8)
    expected = len(samples) * np.diff(cdf)
    observed = np.histogram(samples.x[:, 0], bins=edges)[0]
    statistic = float(((observed - expected) ** 2 / expected).sum())
    # thin=10 leaves the samples nearly independent: a chi-square with K-1 degrees of freedom
    assert statistic < chi2.ppf(0.9999, len(expected) - 1), (statistic, observed, expected.round(1))
    assert samples.metadata["global_acceptance_rate"] > 0.2


# ---------------------------------------------------------------- (c), (d) correlated 10D Gaussian

def _correlated_gaussian():
    rng = np.random.default_rng(7)
    rotation, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    cov = rotation @ np.diag(np.geomspace(0.25, 4.0, 10)) @ rotation.T
    mean = np.linspace(-1.0, 1.0, 10)
    precision = torch.as_tensor(np.linalg.inv(cov))
    mean_t = torch.as_tensor(mean)

    def energy(x: torch.Tensor) -> torch.Tensor:
        d = x - mean_t
        return 0.5 * ((d @ precision) * d).sum(-1)

    return bf.System.from_energy(energy, dim=10, name="gauss10"), mean, cov


def _check_moments(samples: bf.SampleSet, mean: np.ndarray, cov: np.ndarray, sigmas: float = 4.0) -> None:
    for i in range(len(mean)):
        m = bf.estimate.expectation(samples, lambda x, i=i: x[:, i])
        v = bf.estimate.expectation(samples, lambda x, i=i: (x[:, i] - mean[i]) ** 2)
        assert m.reliable and abs(_z(m, mean[i])) < sigmas, (i, m, mean[i])
        assert v.reliable and abs(_z(v, cov[i, i])) < sigmas, (i, v, cov[i, i])
    # stored energies are the system's: <u> = d/2 for a Gaussian
    u = bf.estimate.expectation(samples, samples.energies)
    assert abs(_z(u, len(mean) / 2)) < sigmas, u


def test_hmc_samples_a_correlated_gaussian_with_step_size_frozen_after_warmup():
    system, mean, cov = _correlated_gaussian()
    options = {"seed": 2, "n_chains": 16, "warmup": 300, "step_size": 0.05, "n_leapfrog": 10, "progress": False}
    samples = bf.sample(system, sampler="hmc", n=4000, **options)
    meta = samples.metadata
    assert samples.correlated and meta["sampler"] == "hmc" and samples.time[0] == 1
    assert 0.5 < meta["acceptance_rate"] < 0.85, meta["acceptance_rate"]
    _check_moments(samples, mean, cov)
    # adaptation moved the step sizes away from the initial 0.05, then froze them at the end of warm-up
    assert meta["step_sizes"] == meta["step_sizes_warmup_end"]
    assert min(meta["step_sizes"]) > 0.1
    # a longer production run sees exactly the same warm-up, hence exactly the same step sizes,
    # and the same chains: production does not feed back into the step size
    longer = bf.sample(system, sampler="hmc", n=8000, **options)
    assert longer.metadata["step_sizes"] == meta["step_sizes"]
    assert np.array_equal(longer.x[:250], samples.x[:250])  # chain 0, first 250 samples
    # no warm-up: the initial step size is used throughout
    fixed = bf.sample(system, sampler="hmc", n=64, seed=2, n_chains=4, warmup=0, step_size=0.2, progress=False)
    assert fixed.metadata["step_sizes"] == [0.2] * 4


def test_neutra_samples_a_correlated_gaussian_through_a_poor_flow():
    system, mean, cov = _correlated_gaussian()
    # q ≈ N(0, 9 I): wrong width, no correlation; random couplings make T nonlinear, so the
    # pulled-back potential needs its log-Jacobian term
    flow = _poor_flow(system, std=np.full(10, 3.0), perturb=0.3)
    with torch.no_grad():
        _, logdet = flow.bijection.forward(torch.randn(500, 10, dtype=torch.float64))
    assert logdet.std() > 0.3
    samples = bf.sample(system, sampler="neutra", n=3000, seed=4, model=flow, n_chains=16, warmup=200,
                        n_leapfrog=8, progress=False)
    meta = samples.metadata
    assert meta["sampler"] == "neutra" and meta["model"] == "in-memory flow" and samples.correlated
    assert 0.5 < meta["acceptance_rate"] < 0.9, meta["acceptance_rate"]
    assert meta["step_sizes"] == meta["step_sizes_warmup_end"]
    _check_moments(samples, mean, cov)
    # samples carry the true energies of x = T(z)
    assert np.allclose(samples.energies, system.energy.evaluate(samples.x, need_gradient=False).energy)


# ---------------------------------------------------------------- (e) failed energies

def _truncated_gaussian() -> bf.System:
    """u = |x|²/2 where x1 < 1, NaN (a failed evaluation) elsewhere: a truncated standard normal."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        u = 0.5 * (x**2).sum(-1)
        return torch.where(x[:, 0] < 1.0, u, torch.full_like(u, math.nan))

    return bf.System.from_energy(energy, dim=2, name="truncated", x0=[0.0, 0.0])


@pytest.mark.parametrize(
    "sampler,options",
    [
        ("imh", {}),
        ("isir", {"n_proposals": 4}),
        ("imh", {"local_steps": 2, "local_step_size": 0.5}),
        ("hmc", {"step_size": 0.5, "n_leapfrog": 5}),
        ("neutra", {"step_size": 0.3, "n_leapfrog": 5}),
    ],
)
def test_failed_energies_are_rejected_and_counted(sampler, options):
    system = _truncated_gaussian()
    flow = _poor_flow(system, std=[2.0, 2.0])
    if sampler != "hmc":
        options = {**options, "model": flow}
    samples = bf.sample(system, sampler=sampler, n=2000, seed=5, n_chains=16, warmup=100, progress=False,
                        **options)
    meta = samples.metadata
    assert samples.n_failed == 0 and np.isfinite(samples.energies).all()
    assert (samples.x[:, 0] < 1.0).all()
    if sampler in ("imh", "isir"):
        assert meta["n_nonfinite_proposals"] > 100, meta
        if options.get("local_steps"):
            assert meta["n_local_divergent"] > 0, meta
    else:
        assert meta["n_divergent"] + meta["n_divergent_warmup"] > 0, meta
    # still exact for the truncated target: E[x1] = -φ(1)/Φ(1)
    estimate = bf.estimate.expectation(samples, lambda x: x[:, 0])
    assert abs(_z(estimate, -norm.pdf(1.0) / norm.cdf(1.0))) < 4.0, estimate


# ---------------------------------------------------------------- (f) options and models

@pytest.mark.parametrize("sampler", ["imh", "isir", "hmc", "neutra"])
def test_unknown_options_are_type_errors(sampler):
    system = _truncated_gaussian()
    with pytest.raises(TypeError, match="no option.*bogus"):
        bf.sample(system, sampler=sampler, n=10, bogus=1)


@pytest.mark.parametrize("sampler", ["imh", "isir", "neutra"])
def test_custom_system_needs_a_model(sampler):
    with pytest.raises(ValueError, match="no trained flow is shipped for 'truncated'.*model="):
        bf.sample(_truncated_gaussian(), sampler=sampler, n=10, progress=False)


def test_isir_needs_two_candidates():
    system = _truncated_gaussian()
    with pytest.raises(ValueError, match="n_proposals >= 2"):
        bf.sample(system, sampler="isir", n=10, model=_poor_flow(system, [1.0, 1.0]), n_proposals=1)


# ---------------------------------------------------------------- checkpoints and the CLI

class _Interrupt(bf.energy.FunctionEnergy):
    """A standard-normal energy that raises KeyboardInterrupt on its n-th evaluation (a Ctrl-C)."""

    def __init__(self, after: int) -> None:
        super().__init__(lambda x: 0.5 * (x**2).sum(-1), dim=2)
        self.after = after

    def _evaluate(self, x, need_gradient):
        self.after -= 1
        if self.after == 0:
            raise KeyboardInterrupt
        return super()._evaluate(x, need_gradient)


@pytest.mark.parametrize("sampler", ["imh", "hmc"])
def test_resumes_from_checkpoint_bit_identically(tmp_path, sampler):
    def system():
        return bf.System.from_energy(lambda x: 0.5 * (x**2).sum(-1), dim=2, name="normal")

    flow = _poor_flow(system(), std=[2.0, 2.0])
    options = {"n": 160, "seed": 3, "n_chains": 4, "thin": 2, "warmup": 30, "progress": False, "checkpoint_seconds": 0.0}
    if sampler == "imh":
        options.update(model=flow, local_steps=1, local_step_size=0.3)
    reference = bf.sample(system(), sampler=sampler, **options)
    interrupted = system()
    interrupted.energy = _Interrupt(after=60)
    ckpt = tmp_path / "ckpt.npz"
    with pytest.raises(KeyboardInterrupt):
        bf.sample(interrupted, sampler=sampler, checkpoint=ckpt, **options)
    assert ckpt.exists()
    resumed = bf.sample(system(), sampler=sampler, checkpoint=ckpt, **options)
    assert np.array_equal(resumed.x, reference.x) and np.array_equal(resumed.energies, reference.energies)
    assert resumed.metadata.pop("resumed") and resumed.metadata.pop("resumed_from")["step"] > 0
    assert reference.metadata.pop("resumed") is False and resumed.metadata == reference.metadata
    with pytest.raises(CheckpointError, match="different run"):
        bf.sample(system(), sampler=sampler, checkpoint=ckpt, **{**options, "seed": 4})


def test_cli_samples_double_well_with_imh_and_the_shipped_model(tmp_path):
    assert main(["sample", "double_well_2d", "--sampler", "imh", "--n", "200", "--out", str(tmp_path), "--quiet",
                 "--no-plot"]) == 0
    samples = bf.SampleSet.load(tmp_path)
    assert len(samples) == 200 and samples.metadata["sampler"] == "imh" and samples.correlated
    assert samples.metadata["model"].endswith("flow.pt")
    assert samples.metadata["global_acceptance_rate"] > 0.1
