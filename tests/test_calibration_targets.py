"""The calibration targets against independent truth: analytic energies, finite-difference gradients,
and the exact answers (data/reference.json, the OpenMM target's quadrature) recomputed another way."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from scipy import special

import boltzflow as bf
from boltzflow.reference_data import reference_estimates


def _module(system: bf.System) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"test_{system.name}", Path(system.source) / "system.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gradient_check(system: bf.System, x: np.ndarray, h: float = 1e-6) -> None:
    """The energy's gradient against central finite differences of its energy."""
    result = system.energy.evaluate(x, need_gradient=True)
    numeric = np.empty_like(x)
    for j in range(x.shape[1]):
        step = np.zeros(x.shape[1])
        step[j] = h
        up = system.energy.evaluate(x + step, need_gradient=False).energy
        down = system.energy.evaluate(x - step, need_gradient=False).energy
        numeric[:, j] = (up - down) / (2 * h)
    np.testing.assert_allclose(result.gradient.reshape(x.shape), numeric, rtol=1e-5, atol=1e-5)


def test_four_wells_energy_and_gradient() -> None:
    system = bf.load_system("four_wells_2d")
    points = np.array([[0.0, 0.0], [1.0, 0.4 * np.sin(1.5)], [-2.0, 0.5], [0.3, -0.7], [2.5, 1.0]])
    a, b = points[:, 0], points[:, 1]
    expected = 0.75 * (a**2 - 1) ** 2 * (a**2 - 4) ** 2 + 0.6 * a + 2 * (b - 0.4 * np.sin(1.5 * a)) ** 2
    np.testing.assert_allclose(system.energy.evaluate(points, need_gradient=False).energy, expected, rtol=1e-12)
    # at a = 0: 0.75 · 1 · 16 = 12 kT; on the valley floor at a = ±1 only the tilt is left
    np.testing.assert_allclose(expected[:2], [12.0, 0.6])
    _gradient_check(system, points)


def test_gaussian_10d_energy_and_gradient() -> None:
    system = bf.load_system("gaussian_10d_correlated")
    scales = np.geomspace(0.3, 3.0, 10)
    idx = np.arange(10)
    cov = scales[:, None] * scales[None, :] * 0.8 ** np.abs(idx[:, None] - idx[None, :])
    x = np.random.default_rng(0).normal(1.0, 1.0, size=(5, 10))
    d = x - 1.0
    expected = 0.5 * np.einsum("bi,bi->b", d, np.linalg.solve(cov, d.T).T)
    np.testing.assert_allclose(system.energy.evaluate(x, need_gradient=False).energy, expected, rtol=1e-10)
    assert system.energy.evaluate(np.ones((1, 10)), need_gradient=False).energy[0] == pytest.approx(0.0, abs=1e-12)
    _gradient_check(system, x)


def test_four_wells_reference_by_brute_force_grid() -> None:
    """reference.json's exact answers against a plain 2D grid sum over (a, b) — no conditional Gaussian."""
    system = bf.load_system("four_wells_2d")
    exact = reference_estimates("four_wells_2d")["exact"]
    a = np.linspace(-3.2, 3.2, 3201)
    b = np.linspace(-3.5, 3.5, 1401)
    grid = np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1).reshape(-1, 2)
    u = system.energy.evaluate(grid, need_gradient=False).energy
    w = np.exp(-u)
    cell = (a[1] - a[0]) * (b[1] - b[0])
    z = w.sum()
    p_a, p_b = w[grid[:, 0] < -1.5].sum() / z, w[grid[:, 0] > 1.5].sum() / z
    assert np.log(z * cell) == pytest.approx(exact["log_z"], abs=1e-6)
    assert (w * u).sum() / z == pytest.approx(exact["mean_energy"], abs=1e-6)
    assert (w * grid[:, 0]).sum() / z == pytest.approx(exact["mean_a"], abs=1e-6)
    assert (w * grid[:, 1]).sum() / z == pytest.approx(exact["mean_b"], abs=1e-6)
    assert p_a == pytest.approx(exact["p_a"], abs=2e-4)  # the grid edge at a = −1.5 sits in a ~e⁻⁴ region
    assert p_b == pytest.approx(exact["p_b"], abs=2e-4)
    assert exact["delta_f_b_minus_a"] == pytest.approx(-np.log(exact["p_b"] / exact["p_a"]), abs=1e-12)
    # states as the system defines them
    assert np.array_equal(system.states["A"](grid), grid[:, 0] < -1.5)


def test_gaussian_10d_reference_by_exact_draws() -> None:
    """reference.json's exact answers against Monte Carlo with exact draws (5σ tolerances)."""
    system = bf.load_system("gaussian_10d_correlated")
    exact = reference_estimates("gaussian_10d_correlated")["exact"]
    scales = np.geomspace(0.3, 3.0, 10)
    idx = np.arange(10)
    cov = scales[:, None] * scales[None, :] * 0.8 ** np.abs(idx[:, None] - idx[None, :])
    n = 400_000
    x = np.random.default_rng(1).multivariate_normal(np.ones(10), cov, size=n)
    u = system.energy.evaluate(x, need_gradient=False).energy
    in_a = system.states["A"](x)
    assert u.mean() == pytest.approx(exact["mean_energy"], abs=5 * u.std() / np.sqrt(n))
    assert x[:, 0].mean() == pytest.approx(exact["mean_x0"], abs=5 * 0.3 / np.sqrt(n))
    assert x[:, 9].mean() == pytest.approx(exact["mean_x9"], abs=5 * 3.0 / np.sqrt(n))
    p = exact["p_a"]
    assert in_a.mean() == pytest.approx(p, abs=5 * np.sqrt(p * (1 - p) / n))
    assert p == pytest.approx(special.ndtr(-1 / 3), abs=1e-12)
    assert exact["p_b"] == pytest.approx(1 - p, abs=1e-12)
    # log Z: the mean of exp(u − log q) for the exact draws' own normal density gives Z directly
    log_q = -0.5 * np.einsum("bi,bi->b", x - 1, np.linalg.solve(cov, (x - 1).T).T) - 0.5 * np.log(
        np.linalg.det(2 * np.pi * cov))
    log_w = -u - log_q
    assert special.logsumexp(log_w) - np.log(n) == pytest.approx(exact["log_z"], abs=1e-8)
    assert exact["log_z"] == pytest.approx(0.5 * 10 * np.log(2 * np.pi) + np.log(scales).sum()
                                           + 0.5 * 9 * np.log(1 - 0.8**2), abs=1e-10)


def test_torsion_4atom_energy_gradient_and_exact() -> None:
    """The OpenMM chain: energy from bonds, angles and V(φ) by hand; forces vs finite differences;
    the quadrature answers against a Monte Carlo of the internal coordinates it assumes independent."""
    system = bf.load_system("torsion_4atom")
    module = _module(system)
    kT = 0.00831446261815324 * system.temperature
    rng = np.random.default_rng(2)
    x = system.x0.numpy()[None] + rng.normal(0, 0.01, size=(4, 12))
    p = x.reshape(-1, 4, 3)
    bonds = np.linalg.norm(np.diff(p, axis=1), axis=-1)
    v1, v2 = p[:, :-2] - p[:, 1:-1], p[:, 2:] - p[:, 1:-1]
    angles = np.arccos((v1 * v2).sum(-1) / np.linalg.norm(v1, axis=-1) / np.linalg.norm(v2, axis=-1))
    phi = system.observables["phi"](x)
    expected = (0.5 * module.BOND_K * ((bonds - module.BOND_NM) ** 2).sum(-1)
                + 0.5 * module.ANGLE_K * ((angles - module.ANGLE_RAD) ** 2).sum(-1)
                + 4 * (1 + np.cos(3 * phi)) + 2 * (1 - np.cos(phi - 1))) / kT
    np.testing.assert_allclose(system.energy.evaluate(x, need_gradient=False).energy, expected, rtol=1e-6)
    np.testing.assert_allclose(module.torsion_kj(phi), 4 * (1 + np.cos(3 * phi)) + 2 * (1 - np.cos(phi - 1)))
    _gradient_check(system, x, h=1e-6)
    exact = module.exact_answers(system.temperature)
    # φ's answers by a plain Riemann sum instead of adaptive quadrature
    grid = np.linspace(-np.pi, np.pi, 200_001)
    dens = np.exp(-module.torsion_kj(grid) / kT)
    assert (dens * (grid < 0)).sum() / dens.sum() == pytest.approx(exact["p_a"], abs=1e-4)
    assert (dens * grid).sum() / dens.sum() == pytest.approx(exact["mean_phi"], abs=1e-4)
    # equipartition-like checks of the bond and angle terms: ½ kT each plus small Jacobian corrections
    torsion_mean = (dens * module.torsion_kj(grid)).sum() / dens.sum() / kT
    assert exact["mean_energy"] - torsion_mean == pytest.approx(2.5, abs=0.05)
