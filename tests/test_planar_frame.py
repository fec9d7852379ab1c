"""Planar frame coordinates of 2D particles: invertibility, exact log-determinant, invariance of the flow density."""

import math

import numpy as np
import pytest
import torch

import boltzflow as bf
from boltzflow.flows import build_flow
from boltzflow.flows.centre_of_mass import CentreOfMassFree
from boltzflow.flows.planar_frame import OnFeatures, PlanarFrame
from boltzflow.flows.models import Standardize


def _features(n_particles: int, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 2 * (n_particles - 1), dtype=torch.float64, generator=g)
    z[:, 0] = (torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    return z


@pytest.mark.parametrize("n_particles", [2, 3, 4])
def test_round_trip_and_centred(n_particles):
    frame = PlanarFrame(n_particles)
    z = _features(n_particles, 64)
    x, ld = frame.forward(z)
    assert torch.allclose(x.reshape(64, n_particles, 2).sum(1), torch.zeros(64, 2, dtype=torch.float64), atol=1e-12)
    z_back, ld_inv = frame.inverse(x + torch.tensor([3.0, -1.0], dtype=torch.float64).repeat(n_particles))
    assert torch.allclose(z_back, z, atol=1e-10)
    assert torch.allclose(ld, -ld_inv, atol=1e-12)


@pytest.mark.parametrize("n_particles", [2, 4])
def test_log_det_against_autograd_on_the_isometric_coordinates(n_particles):
    """log|det| of features → isometric centre-of-mass-free coordinates, by brute-force Jacobian."""
    frame, centre = PlanarFrame(n_particles), CentreOfMassFree(n_particles, 2)
    z = _features(n_particles, 3, seed=1)

    def to_isometric(v):
        return centre.inverse(frame.forward(v[None])[0])[0][0]

    for row in z:
        jacobian = torch.autograd.functional.jacobian(to_isometric, row)
        expected = torch.linalg.slogdet(jacobian)[1]
        assert frame.forward(row[None])[1][0].item() == pytest.approx(expected.item(), abs=1e-10)


def test_on_features_passes_the_rest_through():
    inner = Standardize(2)
    inner.loc.copy_(torch.tensor([1.0, 2.0]))
    inner.scale.copy_(torch.tensor([2.0, 3.0]))
    layer = OnFeatures(inner, [1, 2], 3).double()
    z = torch.randn(5, 3, dtype=torch.float64)
    x, ld = layer.forward(z)
    assert torch.equal(x[:, 0], z[:, 0])
    assert torch.allclose(x[:, 1:], torch.tensor([1.0, 2.0]) + torch.tensor([2.0, 3.0]) * z[:, 1:])
    assert torch.allclose(ld, torch.full((5,), math.log(6.0), dtype=torch.float64))
    assert torch.allclose(layer.inverse(x)[0], z)
    with pytest.raises(ValueError, match="distinct indices"):
        OnFeatures(inner, [0, 3], 3)


def test_dw4_flow_density_is_invariant_under_rigid_motions():
    system = bf.load_system("dw4")
    torch.manual_seed(0)
    flow = build_flow(system, n_layers=2, hidden=(16,))
    assert flow.config["frame"] == "planar"
    with torch.no_grad():
        for layer in flow.bijection.layers[0].bijection.layers[:-1]:  # non-trivial couplings
            for p in layer.parameters():
                p.normal_(0, 0.3)
        x, log_q = flow.sample(8)
        assert torch.allclose(flow.log_prob(x), log_q, atol=1e-8)
        angle = 0.7
        rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                                dtype=torch.float64)
        moved = (x.reshape(8, 4, 2) @ rotation.T + torch.tensor([5.0, -2.0], dtype=torch.float64)).reshape(8, 8)
        assert torch.allclose(flow.log_prob(moved), log_q, atol=1e-8)


def test_planar_frame_needs_particles():
    with pytest.raises(ValueError, match="no particles"):
        build_flow(bf.load_system("double_well_2d"), planar_frame=True)
    assert np.isfinite(build_flow(bf.load_system("dw4"), planar_frame=False).sample(3)[1].detach().numpy()).all()
