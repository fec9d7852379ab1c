"""Numba kernels of the toy potentials against torch autograd, finite differences, OpenMM and
hand-computed values."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import openmm
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from boltzflow.energy import (
    CenterOfMassRestraint,
    DoubleWellEnergy,
    Energy,
    LennardJonesEnergy,
    MultiDoubleWellEnergy,
)
from boltzflow.energy.torch_reference import (
    com_restraint_torch,
    double_well_torch,
    lennard_jones_torch,
    multi_double_well_torch,
)

# ---------------------------------------------------------------------------------- helpers


def lattice_configs(rng: np.random.Generator, batch: int, n: int, d: int, spacing: float = 1.15,
                    noise: float = 0.05) -> np.ndarray:
    """Jittered simple-cubic (square in 2D) clusters: no overlaps, moderate LJ energies."""
    side = math.ceil(n ** (1.0 / d))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * d, indexing="ij"), axis=-1).reshape(-1, d)[:n]
    return (spacing * grid[None] + noise * rng.normal(size=(batch, n, d))).reshape(batch, n * d)


def gaussian_configs(scale: float) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    return lambda rng, batch, dim: scale * rng.normal(size=(batch, dim))


# name -> (energy factory, torch reference U(x), configuration generator (rng, batch, dim))
CASES: dict[str, tuple[Callable[[], Energy], Callable[[torch.Tensor], torch.Tensor], Callable]] = {
    "double_well": (
        lambda: DoubleWellEnergy(kT=1.7),
        lambda x: double_well_torch(x, -0.5, -6.0, 1.0) / 1.7,
        gaussian_configs(2.0),
    ),
    "double_well_custom": (
        lambda: DoubleWellEnergy(a=0.3, b=-2.0, c=0.5),
        lambda x: double_well_torch(x, 0.3, -2.0, 0.5),
        gaussian_configs(2.0),
    ),
    "dw4": (
        lambda: MultiDoubleWellEnergy(kT=0.8),
        lambda x: multi_double_well_torch(x, 4, 2, 0.9, -4.0, 4.0) / 0.8,
        gaussian_configs(2.5),
    ),
    "mdw_5x3": (
        lambda: MultiDoubleWellEnergy(5, 3, a=0.5, b=-2.0, d0=2.5),
        lambda x: multi_double_well_torch(x, 5, 3, 0.5, -2.0, 2.5),
        gaussian_configs(2.0),
    ),
    "lj13": (
        lambda: LennardJonesEnergy(13, kT=1.3),
        lambda x: lennard_jones_torch(x, 13, 3, 1.0, 1.0) / 1.3,
        lambda rng, batch, dim: lattice_configs(rng, batch, 13, 3),
    ),
    "lj55_scaled": (
        lambda: LennardJonesEnergy(55, epsilon=0.7, rm=1.2),
        lambda x: lennard_jones_torch(x, 55, 3, 0.7, 1.2),
        lambda rng, batch, dim: lattice_configs(rng, batch, 55, 3, spacing=1.2 * 1.15),
    ),
    "lj7_2d": (
        lambda: LennardJonesEnergy(7, n_dims=2),
        lambda x: lennard_jones_torch(x, 7, 2, 1.0, 1.0),
        lambda rng, batch, dim: lattice_configs(rng, batch, 7, 2),
    ),
    "com_restraint": (
        lambda: CenterOfMassRestraint(13, 3, k=0.6, kT=2.0),
        lambda x: com_restraint_torch(x, 13, 3, 0.6) / 2.0,
        gaussian_configs(1.5),
    ),
}


def openmm_lj_system(n: int, epsilon: float, rm: float, nonbonded: bool = True) -> openmm.System:
    """``n`` particles of mass 1 with a Lennard-Jones pair potential and no cutoff."""
    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    force = openmm.NonbondedForce()
    force.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for _ in range(n):
        force.addParticle(0.0, rm / 2 ** (1 / 6), epsilon)
    system.addForce(force)
    return system


def openmm_energy_forces(system: openmm.System, positions: np.ndarray,
                         parameters: dict[str, float] | None = None) -> tuple[float, np.ndarray]:
    """Potential energy (kJ/mol) and forces (kJ/mol/nm) on the Reference platform."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    for name, value in (parameters or {}).items():
        context.setParameter(name, value)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    return energy, np.asarray(forces)


def icosahedron_vertices() -> np.ndarray:
    """The 12 vertices of a regular icosahedron with unit circumradius."""
    phi = (1 + 5**0.5) / 2
    v = []
    for s1 in (-1, 1):
        for s2 in (-1, 1):
            v += [(0, s1, s2 * phi), (s1, s2 * phi, 0), (s2 * phi, 0, s1)]
    v = np.array(v, dtype=float)
    return v / np.linalg.norm(v[0])


def mackay_icosahedron_55() -> np.ndarray:
    """Unrelaxed two-shell Mackay icosahedron (1 + 12 + 42 sites), unit nearest-neighbour scale."""
    v = icosahedron_vertices()
    dist = np.linalg.norm(v[:, None] - v[None], axis=-1)
    edge = dist[dist > 1e-9].min()
    i, j = np.nonzero(np.triu(np.isclose(dist, edge)))
    assert len(i) == 30
    return np.concatenate([np.zeros((1, 3)), v, 2 * v, v[i] + v[j]])


# ---------------------------------------------------------------------------------- torch reference


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("batch", [1, 37])
def test_matches_torch_reference(name, batch):
    make, reference, configs = CASES[name]
    energy = make()
    x = configs(np.random.default_rng(batch), batch, energy.dim)
    result = energy.evaluate(x)
    assert result.n_failed == 0

    xt = torch.tensor(x, requires_grad=True)
    u_ref = reference(xt)
    u_ref.sum().backward()
    u_ref = u_ref.detach().numpy()
    g_ref = xt.grad.numpy()

    np.testing.assert_allclose(result.energy, u_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.gradient, g_ref, rtol=1e-9, atol=1e-10 * np.abs(g_ref).max())
    # The energy-only path of the kernels gives the same energies.
    assert energy.evaluate(x, need_gradient=False).gradient is None
    np.testing.assert_array_equal(energy.evaluate(x, need_gradient=False).energy, result.energy)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_central_finite_differences(name):
    make, _, configs = CASES[name]
    energy = make()
    h = 1e-6
    for x in configs(np.random.default_rng(7), 3, energy.dim):
        gradient = energy.evaluate(x[None]).gradient[0]
        steps = h * np.eye(energy.dim)
        u_plus = energy.evaluate(x + steps, need_gradient=False).energy
        u_minus = energy.evaluate(x - steps, need_gradient=False).energy
        fd = (u_plus - u_minus) / (2 * h)
        np.testing.assert_allclose(gradient, fd, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(gradient).max()))


@pytest.mark.parametrize("name", ["dw4", "lj13", "com_restraint"])
def test_torch_path_backward_gives_numba_gradient(name):
    make, _, configs = CASES[name]
    energy = make()
    x = configs(np.random.default_rng(3), 5, energy.dim)
    expected = energy.evaluate(x).gradient

    xt = torch.tensor(x, requires_grad=True)
    energy(xt).sum().backward()
    np.testing.assert_array_equal(xt.grad.numpy(), expected)

    # Same through the (B, n_particles, n_dims) event shape.
    xe = torch.tensor(x.reshape(5, *energy.event_shape), requires_grad=True)
    u = energy(xe)
    assert u.shape == (5,)
    u.sum().backward()
    np.testing.assert_array_equal(xe.grad.numpy().reshape(5, -1), expected)


def test_lj_plus_restraint_matches_torch_sum():
    energy = LennardJonesEnergy(13) + CenterOfMassRestraint(13, 3, k=1.0)
    x = lattice_configs(np.random.default_rng(11), 8, 13, 3)
    xt = torch.tensor(x)
    expected = lennard_jones_torch(xt, 13, 3, 1.0, 1.0) + com_restraint_torch(xt, 13, 3, 1.0)
    np.testing.assert_allclose(energy.evaluate(x).energy, expected.numpy(), rtol=1e-10)


# ---------------------------------------------------------------------------------- OpenMM


def test_lj13_matches_openmm_reference_platform():
    epsilon, rm, kT = 0.7, 1.1, 2.5
    energy = LennardJonesEnergy(13, epsilon=epsilon, rm=rm, kT=kT)
    system = openmm_lj_system(13, epsilon, rm)
    configs = lattice_configs(np.random.default_rng(5), 3, 13, 3, spacing=1.15 * rm, noise=0.08)
    result = energy.evaluate(configs)
    for x, u, g in zip(configs, result.energy, result.gradient):
        u_omm, f_omm = openmm_energy_forces(system, x.reshape(13, 3))
        assert u * kT == pytest.approx(u_omm, rel=1e-6)
        # gradient = -F / kT
        np.testing.assert_allclose(-g.reshape(13, 3) * kT, f_omm, rtol=1e-6, atol=1e-6 * np.abs(f_omm).max())


def test_com_restraint_matches_openmm_custom_external_force():
    k, n = 0.8, 13
    restraint = CenterOfMassRestraint(n, 3, k=k)
    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    # With the centre held at the configuration's mean, the per-particle forces k (x_i - c) equal
    # the exact gradient of the restraint (the derivative through the mean cancels).
    force = openmm.CustomExternalForce("0.5*k*((x-cx)^2 + (y-cy)^2 + (z-cz)^2)")
    for name, value in (("k", k), ("cx", 0.0), ("cy", 0.0), ("cz", 0.0)):
        force.addGlobalParameter(name, value)
    for i in range(n):
        force.addParticle(i, [])
    system.addForce(force)

    x = np.random.default_rng(2).normal(size=(n, 3)) + np.array([3.0, -1.0, 0.5])
    centre = x.mean(axis=0)
    u_omm, f_omm = openmm_energy_forces(system, x, dict(zip(("cx", "cy", "cz"), centre)))
    result = restraint.evaluate(x[None])
    assert result.energy[0] == pytest.approx(u_omm, rel=1e-10)
    np.testing.assert_allclose(-result.gradient[0].reshape(n, 3), f_omm, rtol=1e-10, atol=1e-12)
    # Analytic: two particles at distance 2 along x -> each 1 from the centre -> U = k.
    two = CenterOfMassRestraint(2, 3, k=k, kT=0.5)
    assert two.evaluate([[0.0, 0, 0, 2, 0, 0]]).energy[0] == pytest.approx(k / 0.5, rel=1e-14)


# ---------------------------------------------------------------------------------- analytic values


def test_double_well_hand_values():
    dw = DoubleWellEnergy()
    x = np.array([[0.0, 0.0], [1.0, 0.0], [-2.0, 1.0], [2.0, -2.0]])
    result = dw.evaluate(x)
    # -0.5 x1 - 6 x1^2 + x1^4 + x2^2 / 2
    np.testing.assert_allclose(result.energy, [0.0, -5.5, -6.5, -7.0], rtol=1e-14, atol=0)
    # du/dx1 = -0.5 - 12 x1 + 4 x1^3, du/dx2 = x2
    np.testing.assert_allclose(result.gradient, [[-0.5, 0.0], [-8.5, 0.0], [-8.5, 1.0], [7.5, -2.0]], rtol=1e-14)
    hot = DoubleWellEnergy(kT=2.0)
    np.testing.assert_allclose(hot.evaluate(x).energy, result.energy / 2, rtol=1e-14)


def test_dw4_square_hand_value():
    # Square of side d0 = 4: the four sides sit at d = d0 (zero energy); the two diagonals at
    # 4 sqrt(2), t = d - d0 = 4 (sqrt 2 - 1): t^2 = 48 - 32 sqrt 2, t^4 = 4352 - 3072 sqrt 2.
    s2 = math.sqrt(2.0)
    expected = 2 * (0.9 * (4352 - 3072 * s2) - 4.0 * (48 - 32 * s2))
    square = np.array([[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]])
    result = MultiDoubleWellEnergy().evaluate(square + np.array([1.5, -0.5] * 4))
    assert result.energy[0] == pytest.approx(expected, rel=1e-13)
    # Only the diagonals pull: particle 0 feels dU/dd (t) along its diagonal towards particle 2.
    t = 4 * (s2 - 1)
    dudd = 4 * 0.9 * t**3 + 2 * -4.0 * t
    np.testing.assert_allclose(result.gradient[0, :2], -dudd / s2 * np.ones(2), rtol=1e-12)
    np.testing.assert_allclose(result.gradient[0].reshape(4, 2).sum(axis=0), 0.0, atol=1e-12)


def test_dw4_coinciding_particles_have_finite_energy_and_zero_pair_gradient():
    # Unlike LJ, the double well is finite at d = 0 (a d0^4 + b d0^2 per pair); the pair has no
    # direction there, and its gradient contribution is zero (as torch's norm subgradient).
    x = np.array([[0.0, 0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 10.0]])
    energy = MultiDoubleWellEnergy()
    result = energy.evaluate(x)
    assert result.n_failed == 0
    xt = torch.tensor(x, requires_grad=True)
    u = multi_double_well_torch(xt, 4, 2, 0.9, -4.0, 4.0)
    u.sum().backward()
    assert result.energy[0] == pytest.approx(u.item(), rel=1e-12)
    np.testing.assert_allclose(result.gradient, xt.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("n_dims", [2, 3])
def test_lj_pair_values(n_dims):
    epsilon, rm = 1.3, 1.2
    lj = LennardJonesEnergy(2, n_dims=n_dims, epsilon=epsilon, rm=rm, kT=1.0)

    def pair(r: float) -> np.ndarray:
        x = np.zeros((1, 2, n_dims))
        x[0, 1, 0] = r
        return x

    at_min = lj.evaluate(pair(rm))
    assert at_min.energy[0] == pytest.approx(-epsilon, rel=1e-15)  # each pair counted once
    np.testing.assert_allclose(at_min.gradient, 0.0, atol=1e-13)
    assert lj.evaluate(pair(2 ** (-1 / 6) * rm)).energy[0] == pytest.approx(0.0, abs=1e-13)  # r = sigma
    assert lj.evaluate(pair(2 * rm)).energy[0] == pytest.approx(epsilon * (1 / 4096 - 2 / 64), rel=1e-14)
    # dU/dr = -12 eps / r ((rm/r)^12 - (rm/r)^6); at r = sigma: (rm/r)^6 = 2.
    sigma = 2 ** (-1 / 6) * rm
    dudr = -12 * epsilon / sigma * (4.0 - 2.0)
    g = lj.evaluate(pair(sigma)).gradient.reshape(2, n_dims)
    np.testing.assert_allclose(g[1], [dudr] + [0.0] * (n_dims - 1), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(g[0], -g[1])


def test_lj_equilateral_triangle_and_tetrahedron():
    triangle = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0]])
    result = LennardJonesEnergy(3).evaluate(triangle[None])
    assert result.energy[0] == pytest.approx(-3.0, rel=1e-14)
    np.testing.assert_allclose(result.gradient, 0.0, atol=1e-12)
    result_2d = LennardJonesEnergy(3, n_dims=2, epsilon=2.0).evaluate(triangle[None, :, :2])
    assert result_2d.energy[0] == pytest.approx(-6.0, rel=1e-14)

    tetrahedron = np.array([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / math.sqrt(8)  # edge 1
    result = LennardJonesEnergy(4, kT=0.5).evaluate(tetrahedron[None])
    assert result.energy[0] == pytest.approx(-6.0 / 0.5, rel=1e-14)
    np.testing.assert_allclose(result.gradient, 0.0, atol=1e-12)


def test_lj13_global_minimum_is_the_relaxed_icosahedron():
    # The LJ13 global minimum is a centred icosahedron; by symmetry it has one free parameter,
    # the radius. Minimising over it must reproduce the published -44.326801 (pairs once).
    lj = LennardJonesEnergy(13)
    shape = np.concatenate([np.zeros((1, 3)), icosahedron_vertices()])
    best = minimize_scalar(lambda r: lj.evaluate((r * shape)[None], need_gradient=False).energy[0],
                           bracket=(0.9, 1.0), tol=1e-12)
    assert best.fun == pytest.approx(-44.326801, abs=2e-6)
    np.testing.assert_allclose(lj.evaluate((best.x * shape)[None]).gradient, 0.0, atol=1e-4)


def test_lj55_mackay_icosahedron_relaxes_to_the_global_minimum():
    lj = LennardJonesEnergy(55)

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        r = lj.evaluate(x[None])
        return r.energy[0], r.gradient[0]

    start = 0.96 * mackay_icosahedron_55().reshape(-1)
    relaxed = minimize(fun, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 5000})
    assert relaxed.fun == pytest.approx(-279.248470, abs=2e-6)


# ---------------------------------------------------------------------------------- failures


def test_overlapping_lj_particles_are_infinite_with_zero_gradient():
    lj = LennardJonesEnergy(3)
    good = np.array([0.0, 0, 0, 1, 0, 0, 0, 1, 0])
    overlap = np.array([0.0, 0, 0, 0, 0, 0, 0, 1, 0])  # particles 0 and 1 coincide
    with_nan = good.copy()
    with_nan[4] = np.nan
    batch = np.stack([good, overlap, with_nan, good + 0.3])

    alone = lj.evaluate(batch[[0, 3]])
    result = lj.evaluate(batch)
    assert result.n_failed == 2
    assert result.energy[1] == np.inf and result.energy[2] == np.inf
    np.testing.assert_array_equal(result.gradient[[1, 2]], 0.0)
    np.testing.assert_array_equal(result.energy[[0, 3]], alone.energy)
    np.testing.assert_array_equal(result.gradient[[0, 3]], alone.gradient)
    assert lj.n_failed == 2

    energy_only = lj.evaluate(batch, need_gradient=False)
    assert energy_only.n_failed == 2 and np.isposinf(energy_only.energy[[1, 2]]).all()

    # The raw kernel output at r = 0 is non-finite (never a finite garbage value).
    u, g = lj._evaluate(overlap[None], True)
    assert not np.isfinite(u[0])

    xt = torch.tensor(batch, requires_grad=True)
    u = lj(xt)
    assert torch.isposinf(u[1]) and torch.isposinf(u[2])
    u[[0, 3]].sum().backward()
    assert torch.isfinite(xt.grad).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: LennardJonesEnergy(1),
        lambda: LennardJonesEnergy(13, rm=0.0),
        lambda: LennardJonesEnergy(13, epsilon=-1.0),
        lambda: LennardJonesEnergy(13, kT=0.0),
        lambda: MultiDoubleWellEnergy(n_dims=0),
        lambda: MultiDoubleWellEnergy(d0=math.nan),
        lambda: DoubleWellEnergy(kT=-1.0),
        lambda: CenterOfMassRestraint(13, 3, k=-1.0),
    ],
)
def test_invalid_parameters_are_rejected(make):
    with pytest.raises(ValueError):
        make()
