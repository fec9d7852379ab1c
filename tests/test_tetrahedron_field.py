"""The `tetrahedron_field` system: numba energy vs OpenMM, the exact reference by an independent
quadrature over SO(3), and the shipped rigid-body flow against that reference (issue 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import boltzflow as bf
from boltzflow.cli import main as cli
from boltzflow.energy.tetrahedron_field import R_KJ_PER_MOL_K, vertex_up
from boltzflow.flows.rigid import random_uniform, to_matrix
from boltzflow.reference_data import reference_estimates, shipped_model

KAPPA = 20000.0
CHARGES = [1.0, 0.95, 0.9, 0.82]


@pytest.fixture(autouse=True)
def one_thread():
    """A small flow and a cheap numba energy: one torch and one numba thread are fastest (numba's
    parallel workers otherwise keep spinning and slow torch down severalfold)."""
    import numba

    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    numba.set_num_threads(numba_threads)


@pytest.fixture(scope="module")
def system():
    return bf.load_system("tetrahedron_field")


@pytest.fixture(scope="module")
def exact():
    return reference_estimates("tetrahedron_field")["exact"]


def _rigid(system, rotations: np.ndarray) -> np.ndarray:
    """Sites of the rigid tetrahedron turned by ``rotations (N, 3, 3)``, as ``(N, 12)``."""
    return np.einsum("nab,kb->nka", rotations, system.rigid_bodies.reference).reshape(len(rotations), -1)


def _openmm_energies_and_forces(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import openmm

    omm = openmm.System()
    force = openmm.CustomExternalForce("-kappa*c*y^3")
    force.addGlobalParameter("kappa", KAPPA)
    force.addPerParticleParameter("c")
    for i, c in enumerate(CHARGES):
        omm.addParticle(1.0)
        force.addParticle(i, [c])
    omm.addForce(force)
    context = openmm.Context(omm, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for row in x:
        context.setPositions(row.reshape(4, 3))
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy()._value)
        forces.append(np.asarray(state.getForces(asNumpy=True)._value))
    return np.array(energies), np.array(forces)


def test_energy_matches_openmm_on_rigid_configurations(system):
    from boltzflow.energy.openmm_bridge import R_KJ_PER_MOL_K as openmm_r

    assert R_KJ_PER_MOL_K == openmm_r
    kT = R_KJ_PER_MOL_K * system.temperature
    x = _rigid(system, to_matrix(random_uniform((50,), torch.Generator().manual_seed(0))).numpy())
    result = system.energy.evaluate(x)
    energies, forces = _openmm_energies_and_forces(x)
    assert np.allclose(result.energy * kT, energies, rtol=1e-12, atol=1e-10)
    assert np.ptp(energies) > 10 * kT  # the orientations differ by many kT
    # The gradient also carries the rigidity term's response; its torque about the fixed centre is
    # the field's torque, which OpenMM's per-site forces give directly.
    sites = x.reshape(-1, 4, 3)
    torque = np.cross(sites, -result.gradient.reshape(-1, 4, 3) * kT).sum(1)
    assert np.allclose(torque, np.cross(sites, forces).sum(1), rtol=1e-9, atol=1e-9)


def test_gradient_and_rigid_body_invariance(system):
    rng = np.random.default_rng(1)
    rotations = to_matrix(random_uniform((20,), torch.Generator().manual_seed(2))).numpy()
    x = _rigid(system, rotations) + 0.004 * rng.normal(size=(20, 12))  # slightly non-rigid
    result = system.energy.evaluate(x)
    step = 1e-6
    numeric = np.empty_like(x)
    for j in range(12):
        plus, minus = x.copy(), x.copy()
        plus[:, j] += step
        minus[:, j] -= step
        numeric[:, j] = (system.energy.evaluate(plus, False).energy - system.energy.evaluate(minus, False).energy) / (
            2 * step)
    assert np.allclose(numeric, result.gradient, rtol=1e-6, atol=1e-4)
    # Rotating a non-rigid configuration changes only the field part (evaluated on its frame's
    # ideal tetrahedron): u(Qx) − u(x) equals the rigid energy difference of the two frames.
    q = to_matrix(random_uniform((20,), torch.Generator().manual_seed(3))).numpy()
    turned = np.einsum("nab,nkb->nka", q, x.reshape(20, 4, 3)).reshape(20, 12)
    ideal = _ideal(system, x)
    ideal_turned = _ideal(system, turned)
    assert np.allclose(np.einsum("nab,nkb->nka", q, ideal.reshape(20, 4, 3)).reshape(20, 12), ideal_turned, atol=1e-14)
    u = system.energy.evaluate(x, False).energy
    u_turned = system.energy.evaluate(turned, False).energy
    field = system.energy.evaluate(ideal, False).energy
    field_turned = system.energy.evaluate(ideal_turned, False).energy
    assert np.allclose(u_turned - u, field_turned - field, atol=1e-9)
    assert np.all(u > field)  # the rigidity penalty of the noisy sites


def _ideal(system, x: np.ndarray) -> np.ndarray:
    """The ideal tetrahedron placed by the Gram–Schmidt frame of sites 0 and 1 (as in the kernel)."""
    sites = x.reshape(-1, 4, 3)
    reference = system.rigid_bodies.reference

    def frame(a, b):
        e1 = a / np.linalg.norm(a, axis=-1, keepdims=True)
        e2 = b - (b * e1).sum(-1, keepdims=True) * e1
        e2 /= np.linalg.norm(e2, axis=-1, keepdims=True)
        return np.stack([e1, e2, np.cross(e1, e2)], axis=-1)

    rotation = frame(sites[:, 0], sites[:, 1]) @ frame(reference[0], reference[1]).T
    return np.einsum("nab,kb->nka", rotation, reference).reshape(len(x), -1)


def test_reference_agrees_with_euler_angle_quadrature(system, exact):
    """An independent quadrature: all three Euler angles (ZYZ) with the Haar weight sin β, Gauss–Legendre
    in cos β and the trapezoidal rule in α, γ — no use of the reduction to the field direction."""
    n = 56
    cos_beta, w_beta = np.polynomial.legendre.leggauss(n)
    angles = 2 * np.pi * np.arange(n) / n

    def rz(t):
        c, s = np.cos(t), np.sin(t)
        return np.stack([np.stack([c, -s, 0 * c], -1), np.stack([s, c, 0 * c], -1),
                         np.stack([0 * c, 0 * c, 1 + 0 * c], -1)], -2)

    sin_beta = np.sqrt(1 - cos_beta**2)
    ry = np.stack([np.stack([cos_beta, 0 * cos_beta, sin_beta], -1), np.stack([0 * cos_beta, 1 + 0 * cos_beta,
                                                                                0 * cos_beta], -1),
                   np.stack([-sin_beta, 0 * cos_beta, cos_beta], -1)], -2)
    rotations = np.einsum("aij,bjk,ckl->abcil", rz(angles), ry, rz(angles)).reshape(-1, 3, 3)
    weights = np.einsum("a,b,c->abc", np.full(n, 1 / n), w_beta / 2, np.full(n, 1 / n)).reshape(-1)
    x = _rigid(system, rotations)
    u = system.energy.evaluate(x, False).energy
    p = weights * np.exp(-(u - u.min()))
    assert abs(weights.sum() - 1) < 1e-12
    assert np.log(p.sum()) - u.min() == pytest.approx(exact["log_z_haar"], abs=1e-6)
    assert exact["log_z"] == pytest.approx(exact["log_z_haar"] + math.log(2 * math.pi**2), abs=1e-12)
    assert (p * u).sum() / p.sum() == pytest.approx(exact["mean_energy"], abs=1e-6)
    for i in range(4):
        assert (p * vertex_up(x, i)).sum() / p.sum() == pytest.approx(exact[f"p_up{i}"], abs=3e-3)
    weights_of_modes = [exact[f"p_up{i}"] for i in range(4)]
    assert sum(weights_of_modes) == pytest.approx(1.0, abs=1e-9)
    assert min(weights_of_modes) > 0.05 and max(weights_of_modes) < 0.6  # four real, unequal modes


def test_shipped_flow_reproduces_the_exact_modes(system, exact):
    assert shipped_model("tetrahedron_field") is not None
    samples = bf.sample(system, sampler="flow", n=4000, seed=0, progress=False)
    assert samples.n_failed == 0
    assert bf.estimate.relative_ess(samples) >= 0.5
    for i in range(4):
        estimate = bf.estimate.expectation(samples, system.observables[f"up{i}"], seed=0)
        target = exact[f"p_up{i}"]
        assert abs(estimate.value - target) < max(4 * estimate.error, 0.01), (i, estimate, target)
        assert abs(estimate.value - target) < 0.05
    log_z = bf.estimate.log_partition_function(samples, seed=0)
    assert abs(log_z.value - exact["log_z"]) < 4 * log_z.error + 1e-3, (log_z, exact["log_z"])
    delta_f = bf.estimate.free_energy_difference(samples, system.states["A"], system.states["B"], seed=0)
    assert abs(delta_f.value - exact["delta_f_b_minus_a"]) < 4 * delta_f.error


def test_maximum_likelihood_on_weighted_samples_fits_a_rigid_flow(system, exact):
    """ML through the best-fit inverse: on importance-weighted samples of the shipped flow, a fresh
    one-block flow's held-out negative log-likelihood drops well below the uniform density's log 2π²,
    and never below the target's exact entropy ⟨u⟩ + log Z (a cross-entropy of a normalised q cannot)."""
    from boltzflow.flows import build_flow, train

    data = bf.sample(system, sampler="flow", n=3000, seed=4, progress=False)
    held_out = bf.sample(system, sampler="flow", n=2000, seed=5, progress=False)
    torch.manual_seed(0)
    flow = build_flow(system, n_layers=1, num_bins=8, hidden=(32,))
    history = train(system, flow, data=data, n_iterations=60, batch_size=128, lr=5e-3, seed=0, progress=False,
                    validation=held_out, validate_every=60)
    entropy = exact["mean_energy"] + exact["log_z"]  # 0.683 nats, in the S³ measure
    assert entropy - 0.05 < history.validation_ml[-1] < math.log(2 * math.pi**2) - 0.5  # uniform: 2.98 nats


@pytest.mark.filterwarnings("ignore::boltzflow.estimate.LowESSWarning")  # a 3-step flow: few effective samples
def test_cli_trains_and_samples_a_rigid_flow(tmp_path, capsys):
    run = tmp_path / "train"
    assert cli(["train", "tetrahedron_field", "--out", str(run), "--w-kl", "1", "--quiet"]) == 2
    assert "--w-ml 0 --w-kl 1" in capsys.readouterr().err  # no data: reverse KL alone
    assert cli(["train", "tetrahedron_field", "--out", str(run), "--w-ml", "0", "--w-kl", "1", "--iterations", "3",
                "--layers", "1", "--hidden", "8", "--bins", "4", "--batch-size", "16", "--threads", "1",
                "--quiet"]) == 0
    assert cli(["sample", "tetrahedron_field", "--sampler", "flow", "--model", str(run / "model.pt"), "--n", "300",
                "--out", str(tmp_path / "samples"), "--no-plot", "--quiet"]) == 0
    samples = bf.SampleSet.load(tmp_path / "samples")
    assert samples.x.shape == (300, 12) and samples.metadata["normalized_proposal"]
    sites = samples.x.reshape(-1, 4, 3)
    assert np.allclose(np.linalg.norm(sites, axis=-1), 0.109, atol=1e-12)  # rigid, centre at the origin
    capsys.readouterr()
    assert cli(["estimate", str(tmp_path / "samples")]) == 0
    assert "exact (quadrature)" in capsys.readouterr().out
