"""Neutra-MCMC on flows with circular latent features: wrapped moves on the torus × R^k are exact.

The Gaussian-target tests of neutra on flows without circular features (and its failure handling)
live in tests/test_flow_mcmc.py with those of the other flow-MCMC samplers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

import boltzflow as bf
from boltzflow.flows import BaseDistribution, Compose, FlowDistribution, SplineCoupling
from boltzflow.flows.models import Standardize
from boltzflow.samplers.local_kernels import LocalMove
from boltzflow.samplers.neutra import LatentTorus, check_periodic_latent, latent_potential

TWO_PI = 2.0 * math.pi


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread is much faster (and immune to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _circle(n_features: int = 1) -> LatentTorus:
    return LatentTorus(np.ones(n_features, bool), np.full(n_features, -math.pi), np.full(n_features, math.pi))


# ---------------------------------------------------------------- wrapping and the wrapped Gaussian

def test_wrap_maps_circular_features_into_their_period_and_leaves_linear_ones():
    torus = LatentTorus(np.array([True, False, True]), np.array([-math.pi, 0.0, 0.0]), np.array([math.pi, 0.0, 1.0]))
    z = np.array([[math.pi, 7.5, 1.0], [-math.pi - 1e-17, -7.5, -1e-17], [3 * math.pi + 0.5, 1.0, 2.25]])
    w = torus.wrap(z)
    assert np.array_equal(w[:, 1], z[:, 1])
    assert (w[:, 0] >= -math.pi).all() and (w[:, 0] < math.pi).all()
    assert (w[:, 2] >= 0.0).all() and (w[:, 2] < 1.0).all()
    np.testing.assert_allclose(w[:, 0], [-math.pi, -math.pi, -math.pi + 0.5], atol=1e-15)
    np.testing.assert_allclose(w[:, 2], [0.0, 0.0, 0.25], atol=1e-15)  # -1e-17 rounds to a whole period: 0
    assert np.array_equal(torus.wrap(w), w)  # idempotent


@pytest.mark.parametrize("h", [1e-3, 0.05, 0.3, 0.49, 0.5, 3.0, 40.0])
def test_wrapped_gaussian_is_exact_to_float_precision(h):
    """The density against a brute-force sum over 201 images (in log space), and normalised on the circle."""
    torus = _circle()
    start = np.linspace(-math.pi, math.pi, 41, endpoint=False)
    ends = np.linspace(-math.pi, math.pi, 200, endpoint=False)
    to, frm = np.meshgrid(ends, start)  # (41, 200)
    log_q = torus.mala_log_density(to.reshape(-1, 1), frm.reshape(-1, 1), np.full((to.size, 1), 0.7),
                                   np.full(to.size, h)).reshape(41, 200) - 0.5 * math.log(4 * math.pi * h)
    k = np.arange(-100, 101)[:, None, None]
    terms = -((to[None] + k * TWO_PI - (frm - h * 0.7)[None]) ** 2) / (4 * h)
    top = terms.max(0)
    brute = top + np.log(np.exp(terms - top).sum(0)) - 0.5 * math.log(4 * math.pi * h)
    np.testing.assert_allclose(log_q, brute, rtol=1e-14, atol=1e-14)
    if h >= 0.05:  # a periodic trapezoid rule is spectrally accurate for a smooth periodic density
        np.testing.assert_allclose(np.exp(log_q).sum(1) * TWO_PI / 200, 1.0, rtol=1e-12)
    if 0.05 <= h <= 0.49:
        assert torus.n_images(h) == 1
        # the nearest images are needed: k = 0 alone is far off near the seam
        assert np.abs(terms[100] - 0.5 * math.log(4 * math.pi * h) - log_q).max() > 0.3
    assert torus.n_images(0.49) == 1 and torus.n_images(0.5) == 2


def test_mala_density_of_linear_features_is_the_plain_gaussian():
    torus = LatentTorus(np.array([False, True]), np.full(2, -math.pi), np.full(2, math.pi))
    rng = np.random.default_rng(0)
    to, frm, g = rng.normal(size=(3, 50, 2))
    h = rng.uniform(0.05, 0.3, 50)
    linear_only = LatentTorus(np.array([False]), np.zeros(1), np.zeros(1))
    expected = linear_only.mala_log_density(to[:, :1], frm[:, :1], g[:, :1], h) + _circle().mala_log_density(
        to[:, 1:], frm[:, 1:], g[:, 1:], h)
    np.testing.assert_allclose(torus.mala_log_density(to, frm, g, h), expected, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(expected - _circle().mala_log_density(to[:, 1:], frm[:, 1:], g[:, 1:], h),
                               -((to[:, 0] - frm[:, 0] + h * g[:, 0]) ** 2) / (4 * h), rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------- detailed balance on the circle

def _circle_potential(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u(θ) = −1.5 cos(θ − 2.5) − 0.8 cos 2θ: much of its mass sits near the seam at ±π."""
    t = theta[:, 0]
    u = -1.5 * np.cos(t - 2.5) - 0.8 * np.cos(2 * t)
    g = 1.5 * np.sin(t - 2.5) + 1.6 * np.sin(2 * t)
    return u, g[:, None]


def _exact_bin_probabilities(edges: np.ndarray) -> np.ndarray:
    fine = np.linspace(-math.pi, math.pi, 200_001)
    density = np.exp(-_circle_potential(fine[:, None])[0])
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(fine))])
    return np.diff(np.interp(edges, fine, cdf / cdf[-1]))


def _run_kernel(step, h: float, n_chains: int = 4000, n_steps: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.zeros((n_chains, 1))  # all chains start at 0: only the kernel can bring them to equilibrium
    u, g = _circle_potential(z)
    hs = np.full(n_chains, h)
    for _ in range(n_steps):
        move = step(_circle_potential, z, u, g, hs, rng)
        z, u, g = move.x, move.u, move.g
    return z[:, 0]


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_wrapped_kernels_sample_the_circle_exactly(kernel):
    """Large steps, so nearly every move that matters crosses the seam: a chi-square test per bin."""
    torus = _circle()
    if kernel == "mala":
        step, h = torus.mala_step, 1.0
    else:
        def step(potential, z, u, g, h, rng):
            return torus.hmc_step(potential, z, u, g, h, rng, n_leapfrog=4, jitter=0.2)
        h = 0.6
    theta = _run_kernel(step, h)
    assert (theta >= -math.pi).all() and (theta < math.pi).all()
    edges = np.linspace(-math.pi, math.pi, 21)
    expected = len(theta) * _exact_bin_probabilities(edges)
    observed = np.histogram(theta, bins=edges)[0]
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(0.9999, len(expected) - 1), (statistic, observed, expected.round(1))

    if kernel == "mala":
        # the same wrapped proposal judged with the plain Gaussian density of the wrapped points is biased
        plain = LatentTorus(np.zeros(1, bool), np.zeros(1), np.zeros(1))

        def wrong(potential, z, u, g, hs, rng):
            y = torus.wrap(z - hs[:, None] * g + np.sqrt(2 * hs)[:, None] * rng.standard_normal(z.shape))
            u_y, g_y = potential(y)
            log_alpha = u - u_y + plain.mala_log_density(z, y, g_y, hs) - plain.mala_log_density(y, z, g, hs)
            accepted = np.log(rng.uniform(size=len(z))) < log_alpha
            return LocalMove(np.where(accepted[:, None], y, z), np.where(accepted, u_y, u),
                             np.where(accepted[:, None], g_y, g), accepted, np.minimum(np.exp(log_alpha), 1), 0)

        observed = np.histogram(_run_kernel(wrong, h), bins=edges)[0]
        assert float(((observed - expected) ** 2 / expected).sum()) > chi2.ppf(0.9999, len(expected) - 1)


# ---------------------------------------------------------------- neutra through a poor circular flow

KAPPA2, KAPPA1, SLOPE, SIGMA = 1.2, 0.5, 0.8, 0.5


def _torus_line_system() -> bf.System:
    """x1 an angle, x2 on the line: u = −κ₂cos 2x1 − κ₁cos x1 + (x2 − a sin x1)²/(2σ²); two modes in x1."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0], x[:, 1]
        return (-KAPPA2 * torch.cos(2 * a) - KAPPA1 * torch.cos(a)
                + 0.5 * ((b - SLOPE * torch.sin(a)) / SIGMA) ** 2)

    return bf.System.from_energy(energy, dim=2, name="torus_line", x0=[0.3, 0.0])


def _exact_torus_line() -> dict[str, float]:
    """Quadrature of the x1 marginal ∝ exp(κ₂cos 2x1 + κ₁cos x1) (x2 integrates to a constant)."""
    a = np.linspace(-math.pi, math.pi, 20_000, endpoint=False)
    p = np.exp(KAPPA2 * np.cos(2 * a) + KAPPA1 * np.cos(a))
    p /= p.sum()
    return {"cos": float((p * np.cos(a)).sum()), "right": float(p[np.abs(a) < math.pi / 2].sum()),
            "x2_sin": float((p * SLOPE * np.sin(a) ** 2).sum())}


def _poor_circular_flow(perturb: float = 0.15) -> FlowDistribution:
    """Circular-spline couplings (x1 an angle) with random weights: a periodic, poor flow (relative ESS 0.3)."""
    torch.manual_seed(0)
    circular = [True, False]
    layers = [SplineCoupling(mask, circular, num_bins=6, hidden=(8,), tail_bound=4.0)
              for mask in ([True, False], [False, True])]
    flow = FlowDistribution(BaseDistribution(2, circular), Compose(*layers)).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(perturb * torch.randn(parameter.shape, generator=g, dtype=parameter.dtype))
    return flow


def _z(estimate, exact: float) -> float:
    return (estimate.value - exact) / estimate.error


@pytest.mark.parametrize(
    "kernel,options",
    [("mala", {}), pytest.param("hmc", {"n_leapfrog": 4}, marks=pytest.mark.slow)],  # HMC: 4x the gradients
)
def test_neutra_on_torus_times_line_matches_quadrature(kernel, options):
    """Chains start in the x1 = 0 mode; the x1 = π mode holds 30 % of the mass behind a 2.9 kT barrier."""
    system = _torus_line_system()
    flow = _poor_circular_flow()
    with torch.no_grad():  # the flow is visibly nonlinear: its log-Jacobian varies
        _, logdet = flow.bijection.forward(flow.base.sample(500, torch.Generator().manual_seed(2)))
    assert logdet.std() > 0.3
    # 4000 stored states per chain: the chains must cross the barrier often enough to agree (split
    # R-hat 1.08 here; with 150 per chain it is 1.9 and every estimate is flagged unreliable)
    samples = bf.sample(system, sampler="neutra", n=64_000, seed=4, model=flow, n_chains=16, warmup=300,
                        kernel=kernel, progress=False, **options)
    meta = samples.metadata
    assert meta["kernel"] == kernel and meta["n_circular"] == 1 and meta["periodicity_check"] <= 1.0
    assert 0.4 < meta["acceptance_rate"] < 0.95, meta["acceptance_rate"]
    assert meta["step_sizes"] == meta["step_sizes_warmup_end"]
    assert (samples.x[:, 0] >= -math.pi).all() and (samples.x[:, 0] <= math.pi).all()
    assert np.allclose(samples.energies, system.energy.evaluate(samples.x, need_gradient=False).energy)
    exact = _exact_torus_line()
    estimates = {
        "cos": bf.estimate.expectation(samples, lambda x: np.cos(x[:, 0])),
        "right": bf.estimate.expectation(samples, lambda x: (np.abs(x[:, 0]) < math.pi / 2).astype(float)),
        "x2_sin": bf.estimate.expectation(samples, lambda x: x[:, 1] * np.sin(x[:, 0])),
    }
    for key, estimate in estimates.items():
        assert estimate.reliable and abs(_z(estimate, exact[key])) < 4.0, (key, estimate, exact[key])
    assert estimates["right"].error < 0.08  # the check has teeth: both modes are visited


def test_neutra_refuses_a_flow_that_is_not_periodic_in_its_angles():
    """An affine map of a 'circular' latent feature breaks periodicity: refused, not sampled wrongly."""
    system = _torus_line_system()
    standardize = Standardize(2)
    standardize.loc[0], standardize.scale[0] = 0.3, 0.5
    flow = FlowDistribution(BaseDistribution(2, circular=[True, False]), standardize).double()
    with pytest.raises(ValueError, match="not periodic in circular feature 0"):
        bf.sample(system, sampler="neutra", n=10, model=flow, progress=False)
    # the spline flow passes the same check, with margin
    potential = latent_potential(_poor_circular_flow(), system.energy)
    points = np.random.default_rng(0).uniform(-3, 3, (20, 2))
    assert check_periodic_latent(potential, points, LatentTorus.of(_poor_circular_flow())) < 0.5


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="unknown neutra kernel 'nuts'"):
        bf.sample(_torus_line_system(), sampler="neutra", n=10, model=_poor_circular_flow(), kernel="nuts")


# ---------------------------------------------------------------- the shipped alanine dipeptide flow

@pytest.mark.parametrize("kernel", ["hmc", pytest.param("mala", marks=pytest.mark.slow)])
def test_neutra_runs_on_alanine_dipeptide_with_the_shipped_flow(kernel):
    system = bf.load_system("alanine_dipeptide_implicit")
    samples = bf.sample(system, sampler="neutra", n=48, seed=0, n_chains=8, warmup=15, n_leapfrog=3,
                        kernel=kernel, progress=False)
    meta = samples.metadata
    assert meta["n_circular"] == 5 and meta["periodicity_check"] <= 1.0  # its latent target is periodic
    assert 0.05 < meta["acceptance_rate"] <= 1.0 and meta["n_divergent"] == 0, meta
    assert np.isfinite(samples.x).all() and np.isfinite(samples.energies).all() and samples.n_failed == 0
    assert len(np.unique(samples.x[:, 0])) > 8  # chains moved


def test_neutra_refuses_rigid_body_flows_clearly():
    system = bf.load_system("tetrahedron_field")
    with pytest.raises(ValueError, match="torus"):
        bf.sample(system, sampler="neutra", n=10, seed=0, progress=False)
