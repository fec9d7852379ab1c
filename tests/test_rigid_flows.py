"""Rigid-body flows: quaternions, rigid-body coordinates, S³ maps with antipodal symmetry, periodic
position flows, attention conditioners and the full flow (issue 6).

Truths used: rotation algebra (orthogonality, composition), exact rigid round trips, a literal
implementation of the double-Möbius map of Köhler et al., autograd Jacobians projected on
orthonormal tangent bases (S³) for every log-determinant, and Monte Carlo integrals of the flow
density against the uniform measure (normalisation, within the Monte Carlo error).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import boltzflow as bf
from boltzflow.flows import ModelFileError, build_flow, load_model, save_model
from boltzflow.flows.rigid import (
    LinearS3Layer,
    MeridianS3Layer,
    MoleculeAttention,
    RigidBodyCoordinates,
    RigidBodySpec,
    TorusCouplingLayer,
    best_fit_rotation,
    build_rigid_flow,
    canonical_sign,
    from_matrix,
    linear_map,
    meridian_spline,
    multiply,
    random_uniform,
    to_matrix,
)
from boltzflow.flows.rigid.layout import RigidLayout
from boltzflow.flows.rigid.sphere import (
    meridian_coordinates,
    orthonormal_complement,
    symmetrize_spline_parameters,
)

AREA_S3 = 2.0 * math.pi**2
WATER = np.array([[0.0, 0.0, 0.0], [0.09572, 0.0, 0.0], [-0.02399, 0.09267, 0.0], [0.01, 0.012, 0.0]])  # O H H M


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tangent_basis(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (3, 4) of the tangent space of S³ at ``p``."""
    q, _ = torch.linalg.qr(torch.cat([p[:, None], torch.eye(4, dtype=p.dtype)], dim=1))
    return q[:, 1:4].T


def _randomize(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Replace every parameter by Gaussian noise (a generic, far-from-identity flow)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ------------------------------------------------------------------ quaternions


def test_rotation_matrices_and_back():
    q = random_uniform((2000,), _gen(0))
    r = to_matrix(q)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=r.dtype).expand_as(r), atol=1e-14)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2000, dtype=r.dtype), atol=1e-14)
    assert torch.equal(to_matrix(-q), r)  # q and -q: the same rotation, bit for bit
    p = random_uniform((2000,), _gen(1))
    assert torch.allclose(to_matrix(multiply(p, q)), to_matrix(p) @ r, atol=1e-14)
    back = from_matrix(r)
    assert torch.allclose(back, canonical_sign(q), atol=1e-14)
    assert bool((back[:, 0] >= 0).all())
    # near 180° turns (w -> 0), where the trace formula alone loses all precision
    half_turns = torch.nn.functional.normalize(
        torch.cat([torch.full((500, 1), 1e-9, dtype=torch.float64), torch.randn(500, 3, generator=_gen(2),
                                                                                  dtype=torch.float64)], 1), dim=1)
    assert torch.allclose(from_matrix(to_matrix(half_turns)), canonical_sign(half_turns), atol=1e-14)


def test_best_fit_rotation_exact_and_noisy():
    q = random_uniform((500,), _gen(3))
    reference = torch.as_tensor(WATER[:3] - WATER[:3].mean(0))
    target = torch.einsum("bij,kj->bki", to_matrix(q), reference)
    fit, residual = best_fit_rotation(reference, target)
    assert torch.allclose(fit, canonical_sign(q), atol=1e-12)
    assert float(residual.max()) < 1e-7  # sqrt of rounding
    noise = 1e-3 * torch.randn(target.shape, generator=_gen(4), dtype=torch.float64)
    noisy = target + noise - noise.mean(1, keepdim=True)
    fit, residual = best_fit_rotation(reference, noisy)
    angle = 2 * torch.acos((fit * canonical_sign(q)).sum(-1).abs().clamp(max=1.0))
    assert float(angle.max()) < 0.15  # radians, for 1 pm noise on ~0.06 nm arms

    def rms(quaternions):
        placed = torch.einsum("bij,kj->bki", to_matrix(quaternions), reference)
        return torch.sqrt(((noisy - placed) ** 2).sum(-1).mean(-1))

    assert torch.allclose(residual, rms(fit), atol=1e-9)
    assert bool((rms(fit) <= rms(q) + 1e-12).all())  # least squares: no worse than the true rotation
    assert bool((rms(fit) < rms(q)).float().mean() > 0.99)


def test_rigid_coordinates_round_trip_with_virtual_site():
    coordinates = RigidBodyCoordinates(WATER, virtual=[False, False, False, True], fit_weights=[16.0, 1.0, 1.0, 0.0])
    q = random_uniform((64, 5), _gen(5))
    positions = torch.randn(64, 5, 3, generator=_gen(6), dtype=torch.float64)
    atoms = coordinates.to_atoms(positions, q)
    assert atoms.shape == (64, 5, 4, 3)
    assert torch.equal(coordinates.to_atoms(positions, -q), atoms)
    stale = atoms.clone()
    stale[..., 3, :] += 0.5  # a stale virtual site must not change the fit
    p2, q2, residual = coordinates.from_atoms(stale)
    assert torch.allclose(p2, positions, atol=1e-12)
    assert torch.allclose(q2, canonical_sign(q), atol=1e-12)
    assert float(residual.max()) < 1e-7
    with pytest.raises(ValueError, match="shape"):
        coordinates.from_atoms(atoms[..., :3, :])
    with pytest.raises(ValueError, match="collinear"):
        RigidBodySpec(np.array([[0.0, 0, 0], [1.0, 0, 0]]), np.zeros((1, 3)))


# ------------------------------------------------------------------ maps of S³


def _meridian_case(seed: int, num_bins: int = 6, axis: torch.Tensor | None = None):
    axis = random_uniform((), _gen(seed)) if axis is None else axis
    basis = orthonormal_complement(axis)
    weights = torch.randn(3 * num_bins, 3, generator=_gen(seed + 1), dtype=torch.float64)

    def params(q):
        _, _, u, _ = meridian_coordinates(q, axis, basis)
        return symmetrize_spline_parameters(2.0 * torch.tanh(u @ weights.T), 2.0 * torch.tanh(-u @ weights.T), num_bins)

    def apply(q, inverse=False):
        return meridian_spline(q, axis, basis, params(q), num_bins, inverse=inverse)

    return apply


def _tangent_logdet(f, q: torch.Tensor) -> float:
    """log|det| of the differential of ``f`` (on unit vectors) between orthonormal tangent bases."""
    jac = torch.autograd.functional.jacobian(lambda v: f(v / torch.linalg.vector_norm(v)), q)
    return float(torch.linalg.slogdet(_tangent_basis(f(q)) @ jac @ _tangent_basis(q).T)[1])


@pytest.mark.parametrize("kind", ["linear", "meridian"])
def test_s3_maps_antipodal_inverse_and_logdet(kind):
    q = random_uniform((400,), _gen(7))
    if kind == "linear":
        log_matrix = 0.6 * torch.randn(4, 4, generator=_gen(8), dtype=torch.float64)

        def apply(x, inverse=False):
            return linear_map(x, log_matrix, inverse=inverse)
    else:
        apply = _meridian_case(9)
    y, logdet = apply(q)
    assert torch.allclose(torch.linalg.vector_norm(y, dim=-1), torch.ones(400, dtype=y.dtype), atol=1e-14)
    y_neg, logdet_neg = apply(-q)
    assert torch.equal(y_neg, -y) and torch.equal(logdet_neg, logdet)  # f(−q) = −f(q) bit for bit
    back, logdet_back = apply(y, inverse=True)
    assert torch.allclose(back, q, atol=1e-9)
    assert torch.allclose(logdet + logdet_back, torch.zeros_like(logdet), atol=1e-9)
    for i in range(10):
        assert _tangent_logdet(lambda v: apply(v[None])[0][0], q[i]) == pytest.approx(float(logdet[i]), abs=1e-9)


def test_double_mobius_is_a_linear_s3_map():
    """Köhler et al.'s antipodal double-Möbius map, written out literally, equals linear_map with
    A = p̂p̂ᵀ + k (I − p̂p̂ᵀ), k = (1 + |p|²)/(1 − |p|²)."""
    def mobius(p, x):
        d = x - p
        return (1 - (p * p).sum()) * d / (d * d).sum(-1, keepdim=True) - p

    q = random_uniform((1000,), _gen(10))
    for radius in (0.1, 0.6, 0.95):
        p = radius * random_uniform((), _gen(11))
        image = mobius(p, q) - mobius(p, -q)
        image = image / torch.linalg.vector_norm(image, dim=-1, keepdim=True)
        k = (1 + radius**2) / (1 - radius**2)
        axis = p / radius
        log_matrix = math.log(k) * (torch.eye(4, dtype=torch.float64) - torch.outer(axis, axis))
        assert torch.allclose(linear_map(q, log_matrix)[0], image, atol=1e-13)


def test_meridian_spline_identity_at_zero_parameters_and_poles():
    axis = random_uniform((), _gen(12))
    basis = orthonormal_complement(axis)
    assert torch.allclose(basis @ basis.T, torch.eye(3, dtype=torch.float64), atol=1e-15)
    assert float((basis @ axis).abs().max()) < 1e-15
    q = torch.cat([random_uniform((50,), _gen(13)), axis[None], -axis[None]])
    y, logdet = meridian_spline(q, axis, basis, torch.zeros(len(q), 24, dtype=torch.float64), 8)
    assert torch.allclose(y, q, atol=1e-15) and float(logdet.abs().max()) < 1e-14
    y, logdet = _meridian_case(14, axis=axis)(q)
    assert torch.equal(y[-2:], q[-2:]) and torch.allclose(logdet[-2:], torch.zeros(2, dtype=torch.float64))


# ------------------------------------------------------------------ layers and the whole flow


def _box_spec(n: int = 3) -> RigidBodySpec:
    centres = np.array([[0.2, 0.3, 0.4], [0.7, 0.2, 0.6], [0.4, 0.8, 0.1], [0.9, 0.9, 0.9]])[:n]
    return RigidBodySpec(WATER, centres, box=[1.1, 1.0, 0.9], virtual=(False, False, False, True))


def _state_tangent(z: torch.Tensor, layout: RigidLayout) -> torch.Tensor:
    """Orthonormal basis of the tangent space of (S³)^N × R^{3F} at a flat latent ``z (dim,)``."""
    blocks = [_tangent_basis(q) for q in z[: 4 * layout.n_molecules].reshape(-1, 4)]
    blocks.append(torch.eye(3 * layout.n_free, dtype=z.dtype))
    return torch.block_diag(*blocks)


def test_layers_logdet_against_tangent_jacobian():
    spec = _box_spec(3)
    layout = RigidLayout(spec)
    layers = [LinearS3Layer(layout, width=16, blocks=1), MeridianS3Layer(layout, random_uniform((), _gen(15)), 6,
                                                                          (16,), width=16, blocks=1),
              TorusCouplingLayer(layout, 1, 6, width=16, blocks=1)]
    flow = torch.nn.Sequential(*layers).double()
    _randomize(flow, 0.3, 16)
    z = flow_base_sample(layout, 4, 17)
    for layer in layers:
        out, logdet = (t.detach() for t in layer(z))
        back, logdet_back = layer.inverse(out)
        assert torch.allclose(back, z, atol=1e-9) and torch.allclose(logdet + logdet_back, 0 * logdet, atol=1e-9)
        for i in range(2):
            jac = torch.autograd.functional.jacobian(
                lambda v, layer=layer: layer(_normalise_state(v[None], layout))[0][0], z[i])
            projected = _state_tangent(out[i], layout) @ jac @ _state_tangent(z[i], layout).T
            assert float(torch.linalg.slogdet(projected.detach())[1]) == pytest.approx(float(logdet[i]), abs=1e-8)


def flow_base_sample(layout: RigidLayout, n: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    return layout.join(random_uniform((n, layout.n_molecules), g),
                       torch.rand(n, layout.n_free, 3, generator=g, dtype=torch.float64))


def _normalise_state(z: torch.Tensor, layout: RigidLayout) -> torch.Tensor:
    q, s = layout.split(z)
    return layout.join(q / torch.linalg.vector_norm(q, dim=-1, keepdim=True), s)


def test_sign_flip_of_one_molecule_flips_only_its_output():
    """Every layer maps −q_i to −(its image) and leaves the other molecules and the log-det unchanged."""
    spec = _box_spec(3)
    layout = RigidLayout(spec)
    layers = torch.nn.ModuleList([LinearS3Layer(layout, width=16, blocks=1), MeridianS3Layer(
        layout, random_uniform((), _gen(18)), 6, (16,), width=16, blocks=1), TorusCouplingLayer(
        layout, 0, 6, width=16, blocks=1)]).double()
    _randomize(layers, 0.3, 19)
    z = flow_base_sample(layout, 8, 20)
    flip = torch.ones(layout.dim, dtype=torch.float64)
    flip[4:8] = -1.0  # molecule 1
    for layer in layers:
        out, logdet = layer(z)
        out_flipped, logdet_flipped = layer(z * flip)
        assert torch.allclose(out_flipped, out * flip, atol=1e-13)
        assert torch.allclose(logdet_flipped, logdet, atol=1e-12)


def test_orientation_flow_density_integrates_to_one():
    """∫ q dσ over S³ = 2π² E_uniform[q] = 1 for a randomised N = 1 orientation flow (Monte Carlo)."""
    spec = RigidBodySpec(WATER[:3], np.zeros((1, 3)))
    flow = build_rigid_flow(spec, n_layers=3, num_bins=6, hidden=(16,), width=16)
    _randomize(flow, 0.25, 21)
    q = random_uniform((20_000, 1), _gen(22))
    x = RigidBodyCoordinates(WATER[:3]).to_atoms(torch.zeros(20_000, 1, 3, dtype=torch.float64), q)
    with torch.no_grad():
        density = AREA_S3 * torch.exp(flow.log_prob(x.reshape(20_000, -1)))
    mean, error = float(density.mean()), float(density.std() / math.sqrt(len(density)))
    assert float(density.std()) > 0.3  # far from uniform, so the check means something
    assert abs(mean - 1.0) < 4 * error, (mean, error)
    with torch.no_grad():  # sampling and scoring agree
        xs, log_q = flow.sample(500, _gen(23))
        assert torch.allclose(flow.log_prob(xs), log_q, atol=1e-8)


def test_molecular_crystal_flow_normalisation_round_trip_and_gauge():
    """N = 3 water molecules in a box: density integrates to 1 over (S³)³ × (box)² (gauge: molecule 0
    fixed); x -> latent -> x is exact; a common translation does not change log q."""
    spec = _box_spec(3)
    flow = build_rigid_flow(spec, n_layers=2, num_bins=6, hidden=(8,), width=8, heads=2, attention_blocks=1)
    _randomize(flow, 0.15, 24)
    layout = flow.base.layout
    n = 10_000
    z = flow_base_sample(layout, n, 25)
    with torch.no_grad():
        x, _ = flow.bijection.layers[-1](z)  # uniform rigid bodies, as Cartesian sites
        density = torch.exp(flow.log_prob(x) + 3 * math.log(AREA_S3) + 2 * math.log(float(np.prod(spec.box))))
        mean, error = float(density.mean()), float(density.std() / math.sqrt(n))
        assert float(density.std()) > 0.3
        assert abs(mean - 1.0) < 4 * error, (mean, error)
        xs, log_q = flow.sample(200, _gen(26))
        assert torch.allclose(flow.log_prob(xs), log_q, atol=1e-8)
        zs, _ = flow.bijection.inverse(xs)
        assert torch.allclose(flow.bijection.forward(zs)[0], xs, atol=1e-9)
        shift = torch.tensor([0.3, -0.2, 0.05], dtype=torch.float64).repeat(3 * 4)
        assert torch.allclose(flow.log_prob(xs + shift), log_q, atol=1e-8)


def test_attention_is_permutation_equivariant_for_any_number_of_molecules():
    net = MoleculeAttention(7, 5, width=16, blocks=2, heads=4, zero_init=False).double()
    for n in (1, 2, 17, 128):
        features = torch.randn(3, n, 7, generator=_gen(n), dtype=torch.float64)
        perm = torch.randperm(n, generator=_gen(n + 1))
        out = net(features)
        assert out.shape == (3, n, 5)
        assert torch.allclose(net(features[:, perm]), out[:, perm], atol=1e-12)
    with torch.no_grad():
        assert float(MoleculeAttention(7, 5).double()(features).abs().max()) == 0.0  # zero read-out at start


def test_untrained_flow_is_uniform():
    spec = _box_spec(2)
    flow = build_rigid_flow(spec, n_layers=2, num_bins=4, hidden=(8,), width=8)
    with torch.no_grad():
        _, log_q = flow.sample(100, _gen(27))
    expected = -2 * math.log(AREA_S3) - math.log(float(np.prod(spec.box)))
    assert torch.allclose(log_q, torch.full_like(log_q, expected), atol=1e-12)


def test_rigid_model_file_round_trip_and_mismatch(tmp_path):
    system = bf.load_system("tetrahedron_field")
    flow = build_flow(system, n_layers=2, num_bins=4, hidden=(8,))
    assert flow.config["kind"] == "rigid"
    _randomize(flow, 0.2, 28)
    path = save_model(flow, tmp_path / "rigid.pt", {"note": "test"}, parameter_dtype=torch.float64)
    loaded = load_model(path, system)
    x, _ = flow.sample(50, _gen(29))
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob(x), flow.log_prob(x), atol=1e-12)
    with pytest.raises(ModelFileError):
        load_model(path, bf.load_system("double_well_2d"))
    with pytest.raises(ValueError, match="rigid-body"):
        build_flow(system, kind="affine")
