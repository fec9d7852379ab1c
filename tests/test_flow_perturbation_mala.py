"""Gradient (tamed-MALA) moves of flow-perturbation SMC: autograd gradients against finite differences,
and SMC with only gradient moves against quadrature.

The flow is the deliberately wrong closed-form field of ``test_flow_perturbation`` (no training);
truth is a finite-difference derivative of the weight the samplers use, or quadrature of the 1D mixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_continuous_flow import _chain_system
from test_flow_perturbation import MIX, OBSERVABLES, TanhField, _quadrature, _z

import boltzflow as bf
from boltzflow.flows.continuous import ContinuousFlow, build_continuous_flow
from boltzflow.flows.perturbation_target import ExtendedTarget
from boltzflow.samplers.flow_perturbation_mala import adapt_step, log_omega_with_gradient, mala_move, tamed_drift


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _toy() -> tuple[bf.System, ContinuousFlow]:
    flow = ContinuousFlow(1, TanhField(a=0.5, c=0.5, w=2.0, s0=-0.8), n_steps=20, sigma_f_hidden=(16, 16),
                          sigma_b=0.05)
    flow.scale.fill_(2.5)
    return bf.System(name="mix1d", energy=MIX, temperature=1.0, x0=[1.5]), flow


def _finite_difference(target: ExtendedTarget, z: np.ndarray, eps: np.ndarray, h: float = 1e-6) -> np.ndarray:
    y = np.concatenate([z, eps], 1)
    d = z.shape[1]
    grad = np.empty_like(y)
    for i in range(y.shape[1]):
        up, down = y.copy(), y.copy()
        up[:, i] += h
        down[:, i] -= h
        grad[:, i] = (target.evaluate(up[:, :d], up[:, d:])[2] - target.evaluate(down[:, :d], down[:, d:])[2]) / (2 * h)
    return grad


@pytest.mark.parametrize("estimator", ["multistep", "perturbed", "stretch", "hutchinson"])
def test_gradient_of_log_omega_matches_finite_differences_1d(estimator):
    system, flow = _toy()
    target = ExtendedTarget(system, flow, estimator, fd_step=1e-3)
    rng = np.random.default_rng(0)
    z, eps = rng.standard_normal((6, 1)), rng.standard_normal((6, target.noise_dim))
    assert target.noise_dim == (20 if estimator == "multistep" else 1)
    x, _, log_w, grad = log_omega_with_gradient(target, z, eps)
    x_ref, _, log_w_ref = target.evaluate(z, eps)
    np.testing.assert_allclose(log_w, log_w_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x, x_ref, atol=1e-14)
    np.testing.assert_allclose(grad, _finite_difference(target, z, eps), rtol=1e-5, atol=1e-6)
    if estimator != "stretch":  # in 1D α² does not depend on ε; elsewhere ε must matter, or the test is blind
        assert np.abs(grad[:, 1:]).max(0).min() > 1e-3  # every noise coordinate (each RK4 step's, multistep)


@pytest.mark.parametrize("estimator", ["multistep", "perturbed"])
def test_gradient_through_the_internal_coordinate_chart_matches_finite_differences(estimator):
    """4-atom chain: autograd through both ODE passes (each noisy step, multistep), σ_F, the atanh dihedral chart
    and the Cartesian forces."""
    system, frames = _chain_system()
    torch.manual_seed(0)
    flow = build_continuous_flow(system, hidden=(16,), n_steps=4, data=frames, internal_coordinates=True,
                                 sigma_b=0.02)
    target = ExtendedTarget(system, flow, estimator)
    rng = np.random.default_rng(1)
    z, eps = 0.5 * rng.standard_normal((4, 6)), rng.standard_normal((4, target.noise_dim))
    _, _, log_w, grad = log_omega_with_gradient(target, z, eps)
    assert np.isfinite(log_w).all()
    np.testing.assert_allclose(grad, _finite_difference(target, z, eps), rtol=1e-5, atol=1e-5)


def test_tamed_drift_is_the_langevin_drift_until_it_outgrows_the_noise():
    g = np.array([[1.0, -2.0], [3e6, 4e6]])
    drift = tamed_drift(g, 0.01)
    np.testing.assert_allclose(drift[0], 0.005 * g[0])
    assert np.linalg.norm(drift[1]) == pytest.approx(np.sqrt(0.01 * 2)) and drift[1] @ g[1] > 0
    assert adapt_step(0.1, 0.574) == pytest.approx(0.1) and adapt_step(0.1, 0.1) < 0.1 < adapt_step(0.1, 0.9)


def test_mala_move_keeps_a_zero_weight_state_and_rejects_zero_weight_proposals():
    system, flow = _toy()
    target = ExtendedTarget(system, flow)
    rng = np.random.default_rng(2)
    z, eps = rng.standard_normal((50, 1)), rng.standard_normal((50, target.noise_dim))
    x, u, log_w, grad = log_omega_with_gradient(target, z, eps)
    log_w[0], grad[0] = -np.inf, np.nan  # a state of zero weight is not moved
    out = mala_move(target, z, eps, x, u, log_w, grad, 1.0, 0.5, rng)
    assert not out[6][0] and out[0][0, 0] == z[0, 0] and 0 < out[6].mean() < 1
    with pytest.raises(ValueError, match="MALA step"):
        mala_move(target, z, eps, x, u, log_w, grad, 1.0, 0.0, rng)


def test_smc_with_gradient_moves_only_matches_quadrature():
    system, flow = _toy()
    truth = _quadrature(MIX)
    smc = bf.sample(system, "fp-smc", n=2000, seed=3, model=flow, n_temperatures=10, mcmc_steps=0, gradient_steps=2,
                    mala_step=0.05, progress=False)
    rates = smc.metadata["mala_acceptance_rates"]
    assert len(rates) == 10 and 0.3 < rates[-1] < 0.9 and smc.metadata["n_unique"] > 500
    assert smc.metadata["mala_steps"][0] == 0.05 and smc.metadata["gradient_steps"] == 2
    for key, f in OBSERVABLES.items():
        estimate = bf.estimate.expectation(smc, f, n_bootstrap=40)
        assert abs(_z(estimate, truth[key])) < 3.5, (key, estimate, truth[key])
    assert abs(_z(bf.estimate.log_partition_function(smc), truth["log_z"])) < 3.5
    with pytest.raises(ValueError, match="mala_step"):
        bf.sample(system, "fp-smc", n=20, model=flow, gradient_steps=1, mala_step=-1.0, progress=False)
