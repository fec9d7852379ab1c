"""Z-matrices and internal coordinates: validity, exact round trips, exact log-Jacobians."""

import math
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest
import torch
from openmm import app

import boltzflow as bf
from boltzflow.flows.internal_coordinates import InternalCoordinates
from boltzflow.flows.zmatrix import ZMatrix, zmatrix_from_topology

PEPTIDE = {  # ACE-VAL-GLY-NME: two residues with φ/ψ, a branched side chain
    "ACE": ["H1", "CH3", "H2", "H3", "C", "O"],
    "VAL": ["N", "H", "CA", "HA", "CB", "HB", "CG1", "HG11", "HG12", "HG13", "CG2", "HG21", "HG22", "HG23", "C", "O"],
    "GLY": ["N", "H", "CA", "HA2", "HA3", "C", "O"],
    "NME": ["N", "H", "C", "H1", "H2", "H3"],
}


@pytest.fixture(scope="module")
def ala():
    return bf.load_system("alanine_dipeptide_implicit")


@pytest.fixture(scope="module")
def md_frames(ala):
    return torch.as_tensor(bf.sample(ala, sampler="md", n=20, seed=0, thin=200, equilibration_ps=1.0,
                                     progress=False).x, dtype=torch.float64)


def _peptide() -> md.Topology:
    top = app.Topology()
    chain = top.addChain()
    for name, atoms in PEPTIDE.items():
        residue = top.addResidue(name, chain)
        for atom in atoms:
            top.addAtom(atom, app.Element.getBySymbol(atom[0]), residue)
    top.createStandardBonds()
    return md.Topology.from_openmm(top)


def _isobutanol() -> md.Topology:
    """2-methylpropan-1-ol built by hand: (CH3)2CH-CH2-OH, no residue templates."""
    top = md.Topology()
    residue = top.add_residue("IBO", top.add_chain())
    names = ["C1", "C2", "C3", "C4", "O"]
    heavy = {name: top.add_atom(name, md.element.get_by_symbol(name[0]), residue) for name in names}
    for a, b in [("C1", "C2"), ("C2", "C3"), ("C2", "C4"), ("C1", "O")]:
        top.add_bond(heavy[a], heavy[b])
    for parent, n_h in [("C1", 2), ("C2", 1), ("C3", 3), ("C4", 3), ("O", 1)]:
        for k in range(n_h):
            top.add_bond(heavy[parent], top.add_atom(f"H{parent}{k}", md.element.hydrogen, residue))
    return top


def _check_zmatrix(topology: md.Topology, zm: ZMatrix) -> int:
    """Assert the Z-matrix is valid for the bond graph; returns the number of improper rows."""
    bonded = {frozenset((a.index, b.index)) for a, b in topology.bonds}
    order = list(zm.root) + zm.rows[:, 0].tolist()
    assert sorted(order) == list(range(topology.n_atoms))
    assert {frozenset(zm.root[:2]), frozenset(zm.root[1:])} <= bonded
    improper = 0
    for k, (i, b, a, d) in enumerate(zm.rows.tolist()):
        assert max(order.index(b), order.index(a), order.index(d)) < k + 3 and len({i, b, a, d}) == 4
        assert frozenset((i, b)) in bonded and frozenset((b, a)) in bonded
        assert frozenset((a, d)) in bonded or frozenset((b, d)) in bonded
        improper += frozenset((a, d)) not in bonded
    return improper


def _wrapped(d: torch.Tensor) -> torch.Tensor:
    return torch.remainder(d + math.pi, 2 * math.pi) - math.pi


def _random_rigid(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(x.shape[0], 3, 3, generator=g, dtype=x.dtype))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None]
    q = q * torch.linalg.det(q).sign()[:, None, None]  # a proper rotation, not a reflection
    shift = torch.randn(x.shape[0], 1, 3, generator=g, dtype=x.dtype)
    return (x.reshape(x.shape[0], -1, 3) @ q.transpose(1, 2) + shift).reshape(x.shape)


def _random_ic(ic: InternalCoordinates, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, ic.dim, generator=g, dtype=torch.float64)
    bonds = 0.1 + 0.05 * u[:, ic.bonds]
    angles = 1.7 + 0.4 * u[:, ic.angles]
    dihedrals = 2 * math.pi * u[:, ic.dihedrals] - math.pi
    return torch.cat([bonds, angles, dihedrals], dim=1)


def _rotation_zyz(angles: torch.Tensor) -> torch.Tensor:
    def rz(t):
        c, s, o, i = torch.cos(t), torch.sin(t), torch.zeros_like(t), torch.ones_like(t)
        return torch.stack([torch.stack([c, -s, o]), torch.stack([s, c, o]), torch.stack([o, o, i])])

    def ry(t):
        c, s, o, i = torch.cos(t), torch.sin(t), torch.zeros_like(t), torch.ones_like(t)
        return torch.stack([torch.stack([c, o, s]), torch.stack([o, i, o]), torch.stack([-s, o, c])])

    return rz(angles[0]) @ ry(angles[1]) @ rz(angles[2])


def test_zmatrix_of_alanine_dipeptide_is_a_bonded_tree_with_phi_psi(ala):
    zm = zmatrix_from_topology(ala.topology)
    assert zm.root == (6, 8, 14)  # backbone N, CA, C of ALA
    # 7 chain torsions (φ, ψ, two ω, three methyl rotors), one per rotatable bond; the 12 other
    # substituents are placed relative to a sibling on the same centre (stiff dihedrals)
    assert _check_zmatrix(ala.topology, zm) == 12
    bonded = {frozenset((a.index, b.index)) for a, b in ala.topology.bonds}
    chain_axes = [frozenset((b, a)) for _, b, a, d in zm.rows.tolist() if frozenset((a, d)) in bonded]
    assert len(chain_axes) == 7 == len(set(chain_axes))
    assert zm.dihedral_row(4, 6, 8, 14) == zm.torsions["phi1"]
    assert zm.dihedral_row(6, 8, 14, 16) == zm.torsions["psi1"]
    assert zm.dihedral_row(0, 1, 2, 3) is None


def test_zmatrix_of_other_molecules():
    peptide = _peptide()
    assert peptide.n_atoms == 35 and peptide.n_bonds == 34
    zm = zmatrix_from_topology(peptide)
    _check_zmatrix(peptide, zm)
    assert set(zm.torsions) == {"phi1", "psi1", "phi2", "psi2"}
    alcohol = _isobutanol()
    zm = zmatrix_from_topology(alcohol)
    _check_zmatrix(alcohol, zm)
    assert all(alcohol.atom(r).element.symbol != "H" for r in zm.root) and zm.torsions == {}
    with pytest.raises(ValueError, match="root atoms"):
        zmatrix_from_topology(alcohol, root=(0, 1, 5))
    with pytest.raises(ValueError, match="exactly once"):
        ZMatrix((0, 1, 2), [[3, 0, 1, 2], [3, 0, 1, 2]])
    with pytest.raises(ValueError, match="placed earlier"):
        ZMatrix((0, 1, 2), [[3, 4, 1, 2], [4, 0, 1, 2]])
    split = md.Topology()
    residue = split.add_residue("X", split.add_chain())
    atoms = [split.add_atom(f"C{k}", md.element.carbon, residue) for k in range(5)]
    split.add_bond(atoms[0], atoms[1])
    split.add_bond(atoms[1], atoms[2])
    split.add_bond(atoms[2], atoms[3])
    with pytest.raises(ValueError, match="not connected"):
        zmatrix_from_topology(split)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cartesian_round_trip_on_md_frames(ala, md_frames, dtype, tol):
    ic = InternalCoordinates.from_topology(ala.topology)
    x = _random_rigid(md_frames, seed=1).to(dtype)
    q, logdet_inv = ic.inverse(x)
    y, logdet_fwd = ic.forward(q)
    assert q.dtype == y.dtype == dtype and q.shape == (20, 60) and logdet_inv.shape == (20,)
    assert (y - ic.canonicalize(x)).abs().max() < tol
    assert (y.reshape(20, 22, 3)[:, 6].abs().max() == 0) and (y.reshape(20, 22, 3)[:, [8, 14], 2].abs().max() == 0)
    # rigid motion changes neither the internal coordinates nor the interatomic distances
    q_md, _ = ic.inverse(md_frames.to(dtype))
    assert _wrapped(q - q_md).abs().max() < 10 * tol
    pairs = torch.cdist(y.reshape(20, 22, 3), y.reshape(20, 22, 3)) - torch.cdist(*2 * [md_frames.reshape(20, 22, 3)])
    assert pairs.abs().max() < tol
    assert torch.allclose(logdet_fwd, -logdet_inv, rtol=0, atol=10 * tol)


def test_internal_round_trip_is_exact():
    for top in (_peptide(), _isobutanol()):
        ic = InternalCoordinates.from_topology(top)
        q = _random_ic(ic, 16, seed=2)
        x, _ = ic.forward(q)
        back, _ = ic.inverse(_random_rigid(x, seed=3))
        diff = torch.where(ic.circular, _wrapped(back - q), back - q)
        assert diff.abs().max() < 1e-10
        assert ic.circular.sum() == top.n_atoms - 3 and not ic.circular[: 2 * top.n_atoms - 3].any()
        d = back[:, ic.dihedrals]
        assert (d >= -math.pi).all() and (d < math.pi).all()


def test_dihedrals_are_the_system_phi_psi(ala, md_frames):
    ic = InternalCoordinates.from_topology(ala.topology)
    q, _ = ic.inverse(md_frames)
    x = md_frames.numpy()
    for name in ("phi", "psi"):
        np.testing.assert_allclose(q[:, ic.torsion_index[f"{name}1"]].numpy(), ala.observables[name](x), atol=1e-10)
    traj = md.Trajectory(x.reshape(-1, 22, 3), ala.topology)
    expected = md.compute_dihedrals(traj, ic.dihedral_atoms)
    diff = np.remainder(q[:, ic.dihedrals].numpy() - expected + np.pi, 2 * np.pi) - np.pi
    assert np.abs(diff).max() < 1e-5  # mdtraj computes in float32


def test_log_jacobian_matches_autograd(ala, md_frames):
    ic = InternalCoordinates.from_topology(ala.topology).fit_normalization(md_frames)
    assert ic.inverse(md_frames)[0][:, : 2 * 22 - 3].mean(0).abs().max() < 1e-8
    assert 0 < int(ic.circular.sum()) < 22 - 3  # stiff dihedrals became linear, so their scale enters
    _, r1, r2 = ic.zmatrix.root
    free = [3 * r1, 3 * r2, 3 * r2 + 1] + [3 * a + k for a in ic.zmatrix.rows[:, 0] for k in range(3)]
    q_all, logdet_inv = ic.inverse(md_frames[:3])
    for q, ld_inv in zip(q_all, logdet_inv):
        _, ld_fwd = ic.forward(q[None])
        assert torch.allclose(ld_fwd, -ld_inv, rtol=1e-12)
        # (a) Jacobian onto the 3N-6 free canonical-frame components, plus the documented root factor
        jac = torch.autograd.functional.jacobian(lambda v: ic.forward(v[None])[0][0, free], q)
        raw = q * ic.scale + ic.mean
        r01, r12, theta = raw[0], raw[1], raw[ic.angles][0]
        root_factor = 2 * torch.log(r01) + torch.log(r12) + torch.log(torch.sin(theta))
        assert torch.allclose(torch.linalg.slogdet(jac)[1] + root_factor, ld_fwd[0], rtol=1e-8)

        # (b) full 3N x 3N Jacobian of (translation, ZYZ Euler angles, ic) -> x: sin(beta) * J
        def full(v):
            xc = ic.forward(v[6:][None])[0].reshape(22, 3)
            return (xc @ _rotation_zyz(v[3:6]).T + v[:3]).reshape(-1)

        euler = torch.tensor([0.3, 1.1, -2.0], dtype=torch.float64)
        v = torch.cat([torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64), euler, q])
        logdet_full = torch.linalg.slogdet(torch.autograd.functional.jacobian(full, v))[1]
        assert torch.allclose(logdet_full, torch.log(torch.sin(euler[1])) + ld_fwd[0], rtol=1e-8)


def test_normalization_and_bad_input(ala, md_frames):
    ic = InternalCoordinates.from_topology(ala.topology)
    plain_q, plain_ld = ic.inverse(md_frames)
    ic.fit_normalization(ala.x0[None], scale=0.1)
    q, ld = ic.inverse(md_frames)
    torch.testing.assert_close(q[:, ic.bonds], (plain_q[:, ic.bonds] - ic.mean[:21]) / 0.1)
    torch.testing.assert_close(q[:, ic.dihedrals], plain_q[:, ic.dihedrals])
    torch.testing.assert_close(ld, plain_ld - 41 * math.log(0.1))
    torch.testing.assert_close(ic.forward(q)[0], ic.canonicalize(md_frames))
    with pytest.raises(ValueError, match="at least 2 frames"):
        ic.fit_normalization(ala.x0[None])
    with pytest.raises(ValueError, match=r"shape \(batch, 66\), got \(66,\)"):
        ic.inverse(ala.x0)
    with pytest.raises(ValueError, match=r"shape \(batch, 60\), got \(2, 66\)"):
        ic.forward(md_frames[:2])
    with pytest.raises(ValueError, match=r"shape \(batch, 66\)"):
        ic.canonicalize(md_frames[:, :63])


def test_fitted_normalization_keeps_rotors_circular_and_round_trips(ala):
    # the project's reference frames (umbrella MD, 20 ns): both φ basins, rotating methyl groups
    reference = bf.SampleSet.load(Path(__file__).resolve().parents[1] / "data" / "alanine_dipeptide_implicit")
    md_frames = torch.as_tensor(reference.x[::8])
    ic = InternalCoordinates.from_topology(ala.topology).fit_normalization(md_frames)
    n_linear = 2 * 22 - 3
    circular = set(torch.nonzero(ic.circular)[:, 0].tolist())
    # the floppy torsions stay circular: φ, ψ and the three methyl rotors; the 14 others are linear
    assert {ic.torsion_index["phi1"], ic.torsion_index["psi1"]} <= circular
    assert len(circular) == 5 and min(circular) >= n_linear
    q, logdet_inv = ic.inverse(md_frames)
    linear_dihedrals = ~ic.circular & (torch.arange(ic.dim) >= n_linear)
    # stiff dihedrals (amide ω near ±π included) are centred and scaled: O(1) values, no wrap jumps
    assert q[:, linear_dihedrals].abs().max() < 6 and q[:, linear_dihedrals].std(0).min() > 0.3
    x, logdet_fwd = ic.forward(q)
    assert (x - ic.canonicalize(md_frames)).abs().max() < 1e-10
    assert torch.allclose(logdet_fwd, -logdet_inv, rtol=0, atol=1e-9)
    # the scale enters the log-Jacobian exactly: compare with the unnormalised transform
    plain = InternalCoordinates.from_topology(ala.topology)
    assert torch.allclose(logdet_inv, plain.inverse(md_frames)[1] - ic.scale.log().sum(), atol=1e-9)
