"""The orientation prior is a normalised density over SO(3): Z and rotation-invariant averages are unchanged."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.spatial.transform import Rotation

import boltzflow as bf
from boltzflow.energy.orientation import OrientationPrior, quaternion_to_matrix

RNG = np.random.default_rng(0)
REFERENCE = RNG.normal(size=(10, 3))


def _rotated(rotations: np.ndarray, shape: np.ndarray) -> np.ndarray:
    return np.einsum("bij,nj->bni", rotations, shape).reshape(len(rotations), -1)


def test_superposition_recovers_the_rotation_and_aligns():
    prior = OrientationPrior(REFERENCE, 5.0)
    q_true = Rotation.random(20, random_state=1)
    x = _rotated(q_true.as_matrix(), REFERENCE - REFERENCE.mean(0)) + 2.0  # rotated and shifted
    matrices = quaternion_to_matrix(prior._quaternions(__import__("torch").as_tensor(x)).numpy())
    np.testing.assert_allclose(matrices, q_true.as_matrix(), atol=1e-10)
    aligned = prior.align(x).reshape(20, 10, 3)
    np.testing.assert_allclose(aligned - aligned.mean(1, keepdims=True), np.broadcast_to(REFERENCE - REFERENCE.mean(0),
                                                                                          (20, 10, 3)), atol=1e-10)
    np.testing.assert_allclose(prior.cos_angle(x), (np.trace(q_true.as_matrix(), axis1=1, axis2=2) - 1) / 2, atol=1e-10)


@pytest.mark.parametrize("kappa", [0.5, 5.0])
def test_prior_integrates_to_one_over_haar_measure(kappa):
    prior = OrientationPrior(REFERENCE, kappa)
    shape = RNG.normal(size=(10, 3))  # any configuration, not only the reference
    x = _rotated(Rotation.random(100_000, random_state=2).as_matrix(), shape)
    density = np.exp(-prior.evaluate(x, need_gradient=False).energy)
    mean, error = density.mean(), density.std() / math.sqrt(density.size)
    assert abs(mean - 1.0) < 4 * error and error < 0.02


def test_sampled_rotations_follow_the_prior():
    prior = OrientationPrior(REFERENCE, 20.0)
    rotations = prior.sample_rotations(50_000, np.random.default_rng(3))
    np.testing.assert_allclose(np.einsum("bij,bkj->bik", rotations, rotations), np.broadcast_to(np.eye(3), (50_000, 3, 3)),
                               atol=1e-12)
    cos = (np.trace(rotations, axis1=1, axis2=2) - 1) / 2

    def moment(f):
        return integrate.quad(lambda t: f(t) * math.exp(20 * (math.cos(t) - 1)) * (1 - math.cos(t)), 0, math.pi)[0]

    exact = moment(math.cos) / moment(lambda t: 1.0)
    assert abs(cos.mean() - exact) < 4 * cos.std() / math.sqrt(cos.size)
    # energies of rotated reference copies: −κ cos θ + log norm, θ the drawn angle
    u = prior.evaluate(_rotated(rotations[:100], REFERENCE), need_gradient=False).energy
    np.testing.assert_allclose(u, -20 * cos[:100] + prior.log_norm, atol=1e-9)


def test_gradient_matches_finite_differences():
    prior = OrientationPrior(REFERENCE, 3.0)
    x = RNG.normal(size=(3, 30))
    gradient = prior.evaluate(x).gradient
    h, numeric = 1e-6, np.zeros_like(x)
    for k in range(30):
        e = np.zeros(30)
        e[k] = h
        numeric[:, k] = (prior.evaluate(x + e, need_gradient=False).energy
                         - prior.evaluate(x - e, need_gradient=False).energy) / (2 * h)
    np.testing.assert_allclose(gradient, numeric, atol=1e-6)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="kappa"):
        OrientationPrior(REFERENCE, 0.0)
    with pytest.raises(ValueError, match="collinear"):
        OrientationPrior(np.outer(np.arange(4.0), [1.0, 0.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="atoms"):
        OrientationPrior(REFERENCE, 1.0, atoms=[0, 1, 99])
    with pytest.raises(bf.energy.EnergyShapeError):
        OrientationPrior(REFERENCE, 1.0).evaluate(np.zeros((2, 29)))
    u = OrientationPrior(REFERENCE, 1.0).evaluate(np.full((1, 30), np.nan), need_gradient=False)
    assert u.n_failed == 1 and np.isinf(u.energy[0])
