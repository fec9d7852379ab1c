"""Flow layers: invertibility, exact log-determinants, identity at init, normalised densities, periodicity."""

import math

import numpy as np
import pytest
import torch

from boltzflow.flows import (
    MLP,
    AffineCoupling,
    BaseDistribution,
    Compose,
    FlowDistribution,
    Inverse,
    SplineCoupling,
    alternating_masks,
    rq_spline,
)

CIRCULAR = [True, False, True, False]  # features 0, 2 are angles; 1, 3 are linear
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def seeded():
    """Conditioner hidden layers are initialised from torch's global generator."""
    torch.manual_seed(0)


def perturb(flow: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Random non-zero last layers for every conditioner (they start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in flow.modules():
            if isinstance(module, MLP):
                for p in module.net[-1].parameters():
                    p.copy_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return flow


def build(kind: str) -> torch.nn.Module:
    """A layer (or composed flow) on 4 features, two circular, with small conditioners."""
    on_angles, on_linear = alternating_masks(4, 2)  # condition on features (0, 2), then on (1, 3)
    mixed = torch.tensor([False, True, True, False])  # transforms an angle and a linear feature
    spline = {"circular": CIRCULAR, "hidden": (16, 16), "num_bins": 5, "tail_bound": 3.0}
    if kind == "affine":
        return AffineCoupling(on_angles, circular=CIRCULAR, hidden=(16, 16))
    if kind == "spline":
        return SplineCoupling(mixed, **spline)
    return Compose(
        SplineCoupling(on_angles, **spline),
        AffineCoupling(on_angles, circular=CIRCULAR, hidden=(16, 16)),
        SplineCoupling(on_linear, **spline),
        Inverse(SplineCoupling(mixed, **spline)),
        AffineCoupling(on_angles, circular=CIRCULAR, hidden=(16, 16)),
    )


def latent(n: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """Angles uniform on [-π, π), linear features N(0, 2²) (some beyond the spline tails at ±3)."""
    generator = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(n, 4, generator=generator, dtype=dtype)
    angles = (2 * torch.rand(n, 4, generator=generator, dtype=dtype) - 1) * math.pi
    return torch.where(torch.tensor(CIRCULAR), angles, z)


KINDS = ["affine", "spline", "compose"]


@pytest.mark.parametrize("kind", KINDS)
def test_identity_at_initialisation(kind):
    flow = build(kind)
    z = latent(64, torch.float32)
    x, logdet = flow.forward(z)
    assert torch.allclose(x, z, atol=1e-6) and logdet.abs().max() < 1e-6
    back, logdet_inv = flow.inverse(z)
    assert torch.allclose(back, z, atol=1e-6) and logdet_inv.abs().max() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_with_random_parameters(kind, dtype):
    flow = perturb(build(kind)).to(dtype)
    z = latent(256, dtype)
    x, logdet = flow.forward(z)
    assert x.dtype == dtype and logdet.shape == (256,)
    assert (x - z).abs().max() > 0.1 and logdet.abs().max() > 0.1  # really not the identity
    back, logdet_inv = flow.inverse(x)
    assert (back - z).abs().max() < TOL[dtype]
    assert (logdet + logdet_inv).abs().max() < 10 * TOL[dtype]
    angles = x[:, torch.tensor(CIRCULAR)]
    assert (angles >= -math.pi).all() and (angles <= math.pi).all()


@pytest.mark.parametrize("kind", KINDS)
def test_log_determinant_matches_autograd_jacobian(kind):
    flow = perturb(build(kind)).double()
    for z in latent(4, torch.float64):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow.forward(v[None])[0][0], z)
        x, logdet = flow.forward(z[None])
        assert torch.allclose(logdet[0], torch.linalg.slogdet(jacobian)[1], atol=1e-9)
        jacobian_inv = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], x[0])
        assert torch.allclose(flow.inverse(x)[1][0], torch.linalg.slogdet(jacobian_inv)[1], atol=1e-9)


def test_three_feature_spline_log_determinant():
    flow = perturb(
        SplineCoupling([False, True, False], circular=[True, False, False], hidden=(8,), num_bins=4)
    ).double()
    z = torch.tensor([[2.5, -0.3, 0.7], [-3.0, 1.2, -4.0]], dtype=torch.float64)
    for row, logdet in zip(z, flow.forward(z)[1]):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow.forward(v[None])[0][0], row)
        assert torch.allclose(logdet, torch.linalg.slogdet(jacobian)[1], atol=1e-10)


def spline_parameters(num_bins: int, dtype: torch.dtype, seed: int = 3, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(num_bins, generator=generator, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_spline_is_identity_outside_its_interval(dtype):
    params = spline_parameters(6, dtype)
    outside = torch.tensor([-50.0, -2.0001, 2.0001, 2.5, 1e3], dtype=dtype)
    ends = torch.tensor([-2.0, 2.0], dtype=dtype)
    for inverse in (False, True):
        y, logdet = rq_spline(outside, *params, inverse=inverse, left=-2.0, right=2.0)
        assert torch.equal(y, outside) and torch.equal(logdet, torch.zeros_like(outside))
        y, logdet = rq_spline(ends, *params, inverse=inverse, left=-2.0, right=2.0)  # fixed, with slope 1
        assert torch.allclose(y, ends, rtol=0, atol=TOL[dtype]) and logdet.abs().max() < TOL[dtype]
    inside = torch.tensor([-1.0, 0.3, 1.5], dtype=dtype)
    assert (rq_spline(inside, *params, left=-2.0, right=2.0)[0] - inside).abs().max() > 1e-2


def test_spline_is_identity_at_zero_parameters():
    zeros = torch.zeros(7, dtype=torch.float64)
    x = torch.linspace(-math.pi, math.pi, 101, dtype=torch.float64)
    for circular in (False, True):
        y, logdet = rq_spline(x, zeros, zeros, zeros, left=-math.pi, right=math.pi, circular=circular)
        assert (y - x).abs().max() < 1e-12 and logdet.abs().max() < 1e-12


def test_circular_spline_is_periodic():
    params = spline_parameters(6, torch.float64, seed=5, scale=1.5)
    ends = torch.tensor([-math.pi, math.pi], dtype=torch.float64)
    y, logdet = rq_spline(ends, *params, left=-math.pi, right=math.pi, circular=True)
    assert torch.equal(y, ends)
    assert abs(logdet[0] - logdet[1]) < 1e-12 and abs(logdet[0]) > 1e-2  # shared, learned end derivative
    eps = 1e-6  # one-sided finite differences on both sides of the seam agree
    probes = torch.tensor([-math.pi, -math.pi + eps, math.pi - eps, math.pi], dtype=torch.float64)
    f = rq_spline(probes, *params, left=-math.pi, right=math.pi, circular=True)[0]
    assert abs((f[1] - f[0]) / eps - (f[3] - f[2]) / eps) < 1e-4
    theta = torch.tensor([-2.0, 0.4, 3.0], dtype=torch.float64)
    for inverse in (False, True):
        base = rq_spline(theta, *params, inverse=inverse, left=-math.pi, right=math.pi, circular=True)
        for shift in (2 * math.pi, -4 * math.pi):
            wrapped = rq_spline(theta + shift, *params, inverse=inverse, left=-math.pi, right=math.pi, circular=True)
            assert torch.allclose(wrapped[0], base[0], atol=1e-12) and torch.allclose(wrapped[1], base[1], atol=1e-12)


def test_circular_bounds_stay_exact_after_moving_to_float64():
    layer = perturb(SplineCoupling([False, True], circular=[True, False], hidden=(8,))).double()  # built in float32
    ends = torch.tensor([[-math.pi, 0.5], [math.pi, 0.5]], dtype=torch.float64)
    x, logdet = layer.forward(ends)
    assert torch.equal(x[:, 0], ends[:, 0]) and abs(logdet[0] - logdet[1]) < 1e-12


@pytest.mark.parametrize("layer", [SplineCoupling, AffineCoupling])
def test_conditioner_is_periodic_in_circular_inputs(layer):
    flow = perturb(layer([True, False], circular=[True, False], hidden=(16,))).double()
    x = torch.tensor([[0.7, 0.4], [-3.0, -1.1], [math.pi, 2.0]], dtype=torch.float64)
    shifted = x + torch.tensor([2 * math.pi, 0.0], dtype=torch.float64)
    y, logdet = flow.forward(x)
    y_shifted, logdet_shifted = flow.forward(shifted)
    assert (y[:, 1] - x[:, 1]).abs().max() > 1e-2
    assert torch.allclose(y_shifted[:, 1], y[:, 1], atol=1e-12) and torch.allclose(logdet_shifted, logdet, atol=1e-12)


def test_affine_coupling_refuses_to_transform_angles():
    with pytest.raises(ValueError, match="cannot transform circular features \\[1\\]"):
        AffineCoupling([True, False, True], circular=[False, True, False])


def test_coupling_rejects_a_mask_that_transforms_nothing():
    with pytest.raises(ValueError, match="transform nothing"):
        SplineCoupling([True, True])


def test_alternating_masks():
    masks = alternating_masks(5, 3)
    even, odd = [True, False, True, False, True], [False, True, False, True, False]
    assert [m.tolist() for m in masks] == [even, odd, even]


def integrate(density: torch.Tensor, *grids: np.ndarray) -> float:
    values = density.numpy()
    for axis_grid in reversed(grids):
        values = np.trapezoid(values, axis_grid, axis=-1)
    return float(values)


def test_1d_linear_spline_flow_density_integrates_to_one():
    layers = [SplineCoupling([False], left=-2.0, right=2.0, num_bins=6, hidden=(8,)) for _ in range(2)]
    flow = FlowDistribution(BaseDistribution(1), perturb(Compose(*layers))).double()
    grid = np.linspace(-12.0, 12.0, 24001)
    log_q = flow.log_prob(torch.from_numpy(grid)[:, None]).detach()
    assert log_q.exp().max() > 0.6  # far from the standard normal's 0.40: the spline does something
    assert abs(integrate(log_q.exp(), grid) - 1.0) < 1e-3


def test_1d_circular_spline_flow_density_integrates_to_one():
    flow = FlowDistribution(
        BaseDistribution(1, circular=[True]),
        perturb(SplineCoupling([False], circular=[True], num_bins=6, hidden=(8,))),
    ).double()
    grid = np.linspace(-math.pi, math.pi, 20001)
    q = flow.log_prob(torch.from_numpy(grid)[:, None]).detach().exp()
    assert q.max() / q.min() > 3.0  # far from uniform
    assert abs(q[0] - q[-1]) < 1e-12  # continuous across the seam
    assert abs(integrate(q, grid) - 1.0) < 1e-3


def test_2d_flow_on_angle_and_line_integrates_to_one():
    circular = [True, False]
    flow = FlowDistribution(
        BaseDistribution(2, circular=circular),
        perturb(
            Compose(
                SplineCoupling([True, False], circular=circular, tail_bound=3.0, hidden=(16,)),
                SplineCoupling([False, True], circular=circular, tail_bound=3.0, hidden=(16,)),
                AffineCoupling([True, False], circular=circular, hidden=(16,)),
            ),
            std=0.2,
        ),
    ).double()
    theta, y = np.linspace(-math.pi, math.pi, 301), np.linspace(-15.0, 15.0, 1501)
    points = torch.from_numpy(np.stack(np.meshgrid(theta, y, indexing="ij"), axis=-1).reshape(-1, 2))
    with torch.no_grad():
        q = flow.log_prob(points).exp().reshape(len(theta), len(y))
    assert abs(integrate(q, theta, y) - 1.0) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flow_distribution_sample_and_log_prob_agree(dtype):
    flow = FlowDistribution(BaseDistribution(4, circular=CIRCULAR), perturb(build("compose"))).to(dtype)
    x, log_q = flow.sample(128, generator=torch.Generator().manual_seed(0))
    assert x.dtype == log_q.dtype == dtype and x.shape == (128, 4) and log_q.shape == (128,)
    assert (flow.log_prob(x) - log_q).abs().max() < 1e3 * TOL[dtype]
    x_again, _ = flow.sample(128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x_again)


def test_base_distribution_samples_and_density():
    base = BaseDistribution(3, circular=[True, False, True], low=[-math.pi, 0.0, 0.0], high=[math.pi, 0.0, 1.0])
    z = base.sample(20000, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32
    assert (z[:, 0] >= -math.pi).all() and (z[:, 0] < math.pi).all() and (z[:, 2] >= 0).all() and (z[:, 2] < 1).all()
    assert abs(z[:, 1].std() - 1.0) < 0.03
    point = torch.tensor([[0.3, 0.5, 0.2]])
    expected = -math.log(2 * math.pi) - 0.5 * 0.25 - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(base.log_prob(point), torch.tensor([expected]))
