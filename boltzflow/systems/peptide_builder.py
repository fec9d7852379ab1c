"""Build peptides from ideal geometry: heavy atoms by NeRF, hydrogens and termini by OpenMM.

A peptide is grown atom by atom from internal coordinates (bond length, bond angle, dihedral) with
the Natural Extension Reference Frame construction: each new atom ``d`` is placed bonded to ``c``
with bond length ``|cd|``, bond angle ``b-c-d`` and dihedral ``a-b-c-d``. Bond lengths and angles
are ideal values (Engh & Huber 1991, rounded; aromatic rings are regular polygons so that they
close exactly); the backbone dihedrals (φ, ψ, ω) and side-chain χ angles are the caller's.
Atom and residue names are the standard PDB / Amber ones, so OpenMM's ``Modeller.addHydrogens``
and the Amber force fields recognise every residue.

Conventions (degrees, IUPAC signs):

* ``phi[i]`` = C(i−1)–N(i)–CA(i)–C(i); for charged termini the first residue has no φ (its value
  is not used);
* ``psi[i]`` = N(i)–CA(i)–C(i)–N(i+1); for a charged C-terminus the last ψ places OXT;
* ``omega[i]`` = CA(i)–C(i)–N(i+1)–CA(i+1), the peptide bond *after* residue ``i`` (to the NME cap
  for the last residue when capped; not used for a charged C-terminus). The ACE–residue 1 bond is
  always trans (180°). 180° is trans, 0° cis;
* ``chi[i]`` = the residue's side-chain χ1, χ2, ... (:data:`CHI_DEFAULTS` when not given).

Termini: ``"capped"`` (default) adds an acetyl (ACE) and an N-methylamide (NME) cap, giving a
neutral chain; ``"charged"`` leaves NH3+ / COO− termini (OXT is built; OpenMM adds the NH3+
hydrogens). Hydrogens (and the protonation states at the given pH: Asp/Glu charged, Lys/Arg
charged, His by hydrogen bonding) come from :func:`add_hydrogens`.

Lengths are in nm, angles in degrees.

Examples
--------
>>> from boltzflow.systems.peptide_builder import build_peptide, add_hydrogens
>>> peptide = build_peptide("GAG", phi=-60.0, psi=-45.0)
>>> [r.name for r in peptide.topology.residues()]
['ACE', 'GLY', 'ALA', 'GLY', 'NME']
>>> topology, positions = add_hydrogens(peptide, ["amber14-all.xml"])
>>> topology.getNumAtoms()
36
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm.app as app
import openmm.unit as unit

from ..io import atomic_write

# ---------------------------------------------------------------------------------------------------
# Ideal geometry (Engh & Huber 1991, rounded): bonds in nm, angles in degrees.

BOND_N_CA = {"default": 0.1458, "GLY": 0.1451, "PRO": 0.1466}
BOND_CA_C = {"default": 0.1525, "GLY": 0.1516}
BOND_C_N = {"default": 0.1329, "PRO": 0.1341}  # keyed by the residue *after* the peptide bond
BOND_C_O = 0.1231
BOND_C_OXT = 0.1249  # carboxylate C-O (both oxygens of a charged C-terminus)
BOND_CAP_CH3_C = 0.1520  # ACE methyl C - carbonyl C
BOND_CAP_N_CH3 = 0.1458  # NME N - methyl C

ANGLE_N_CA_C = {"default": 111.2, "GLY": 112.5, "PRO": 111.8}
ANGLE_CA_C_N = {"default": 116.2, "GLY": 116.4}
ANGLE_C_N_CA = {"default": 121.7, "GLY": 120.6, "PRO": 122.6}  # keyed by the residue of N
ANGLE_CA_C_O = 120.8
ANGLE_CA_C_OXT = 118.4  # carboxylate

# C-beta: bond CA-CB, angles N-CA-CB and C-CA-CB
CB_GEOMETRY = {
    "default": (0.1530, 110.5, 110.1),
    "ALA": (0.1520, 110.4, 110.5),
    "VAL": (0.1540, 111.5, 109.1),
    "ILE": (0.1540, 111.5, 109.1),
    "THR": (0.1540, 111.5, 109.1),
    "PRO": (0.1530, 103.0, 111.7),
}

RING6 = 0.1390  # regular hexagons (Phe, Tyr, Trp benzo ring)
RING5_TRP = 0.1390  # Trp pyrrole ring: regular pentagon with the same side, fused exactly
RING5_HIS = 0.1360  # His imidazole: regular pentagon


@dataclass(frozen=True)
class Chi:
    """A dihedral given by the residue's ``index``-th χ angle (1-based) plus ``offset`` degrees."""

    index: int
    offset: float = 0.0


@dataclass(frozen=True)
class SideChainAtom:
    """One side-chain heavy atom: placed bonded to ``c`` with angle ``b-c-atom`` and dihedral ``a-b-c-atom``."""

    name: str
    element: str
    a: str
    b: str
    c: str
    bond: float
    angle: float
    dihedral: float | Chi


def _sc(name: str, a: str, b: str, c: str, bond: float, angle: float, dihedral: float | Chi) -> SideChainAtom:
    return SideChainAtom(name, name[0], a, b, c, bond, angle, dihedral)


# Side chains beyond CB, in placement (and PDB) order. Branches of a tetrahedral atom sit at
# χ − 120° (L-Thr OG1/CG2 and L-Ile CG1/CG2, as in PDB 1UAO's threonines).
SIDE_CHAINS: dict[str, list[SideChainAtom]] = {
    "GLY": [],
    "ALA": [],
    "SER": [_sc("OG", "N", "CA", "CB", 0.1417, 111.1, Chi(1))],
    "CYS": [_sc("SG", "N", "CA", "CB", 0.1808, 114.4, Chi(1))],
    "THR": [_sc("OG1", "N", "CA", "CB", 0.1433, 109.6, Chi(1)),
            _sc("CG2", "N", "CA", "CB", 0.1521, 110.5, Chi(1, -120.0))],
    "VAL": [_sc("CG1", "N", "CA", "CB", 0.1521, 110.5, Chi(1)),
            _sc("CG2", "N", "CA", "CB", 0.1521, 110.5, Chi(1, -120.0))],
    "ILE": [_sc("CG1", "N", "CA", "CB", 0.1530, 110.4, Chi(1)),
            _sc("CG2", "N", "CA", "CB", 0.1521, 110.5, Chi(1, -120.0)),
            _sc("CD1", "CA", "CB", "CG1", 0.1513, 113.8, Chi(2))],
    "LEU": [_sc("CG", "N", "CA", "CB", 0.1530, 116.3, Chi(1)),
            _sc("CD1", "CA", "CB", "CG", 0.1521, 110.7, Chi(2)),
            _sc("CD2", "CA", "CB", "CG", 0.1521, 110.7, Chi(2, -120.0))],
    "MET": [_sc("CG", "N", "CA", "CB", 0.1520, 114.1, Chi(1)),
            _sc("SD", "CA", "CB", "CG", 0.1803, 112.7, Chi(2)),
            _sc("CE", "CB", "CG", "SD", 0.1791, 100.9, Chi(3))],
    "PRO": [_sc("CG", "N", "CA", "CB", 0.1492, 104.5, Chi(1)),
            _sc("CD", "CA", "CB", "CG", 0.1503, 106.1, Chi(2))],
    "PHE": [_sc("CG", "N", "CA", "CB", 0.1502, 113.8, Chi(1)),
            _sc("CD1", "CA", "CB", "CG", RING6, 120.0, Chi(2)),
            _sc("CD2", "CA", "CB", "CG", RING6, 120.0, Chi(2, 180.0)),
            _sc("CE1", "CB", "CG", "CD1", RING6, 120.0, 180.0),
            _sc("CE2", "CB", "CG", "CD2", RING6, 120.0, 180.0),
            _sc("CZ", "CG", "CD1", "CE1", RING6, 120.0, 0.0)],
    "TYR": [_sc("CG", "N", "CA", "CB", 0.1502, 113.8, Chi(1)),
            _sc("CD1", "CA", "CB", "CG", RING6, 120.0, Chi(2)),
            _sc("CD2", "CA", "CB", "CG", RING6, 120.0, Chi(2, 180.0)),
            _sc("CE1", "CB", "CG", "CD1", RING6, 120.0, 180.0),
            _sc("CE2", "CB", "CG", "CD2", RING6, 120.0, 180.0),
            _sc("CZ", "CG", "CD1", "CE1", RING6, 120.0, 0.0),
            SideChainAtom("OH", "O", "CD1", "CE1", "CZ", 0.1376, 120.0, 180.0)],
    "TRP": [_sc("CG", "N", "CA", "CB", 0.1498, 113.6, Chi(1)),
            _sc("CD1", "CA", "CB", "CG", RING5_TRP, 126.0, Chi(2)),
            _sc("CD2", "CA", "CB", "CG", RING5_TRP, 126.0, Chi(2, 180.0)),
            _sc("NE1", "CB", "CG", "CD1", RING5_TRP, 108.0, 180.0),
            _sc("CE2", "CB", "CG", "CD2", RING5_TRP, 108.0, 180.0),
            _sc("CE3", "CB", "CG", "CD2", RING6, 132.0, 0.0),
            _sc("CZ2", "CG", "CD2", "CE2", RING6, 120.0, 180.0),
            _sc("CZ3", "CG", "CD2", "CE3", RING6, 120.0, 180.0),
            _sc("CH2", "CD2", "CE2", "CZ2", RING6, 120.0, 0.0)],
    "HIS": [_sc("CG", "N", "CA", "CB", 0.1497, 113.8, Chi(1)),
            _sc("ND1", "CA", "CB", "CG", RING5_HIS, 126.0, Chi(2)),
            _sc("CD2", "CA", "CB", "CG", RING5_HIS, 126.0, Chi(2, 180.0)),
            _sc("CE1", "CB", "CG", "ND1", RING5_HIS, 108.0, 180.0),
            _sc("NE2", "CB", "CG", "CD2", RING5_HIS, 108.0, 180.0)],
    "ASP": [_sc("CG", "N", "CA", "CB", 0.1516, 112.6, Chi(1)),
            _sc("OD1", "CA", "CB", "CG", 0.1249, 118.4, Chi(2)),
            _sc("OD2", "CA", "CB", "CG", 0.1249, 118.4, Chi(2, 180.0))],
    "ASN": [_sc("CG", "N", "CA", "CB", 0.1516, 112.6, Chi(1)),
            _sc("OD1", "CA", "CB", "CG", 0.1231, 120.8, Chi(2)),
            _sc("ND2", "CA", "CB", "CG", 0.1328, 116.4, Chi(2, 180.0))],
    "GLU": [_sc("CG", "N", "CA", "CB", 0.1520, 114.1, Chi(1)),
            _sc("CD", "CA", "CB", "CG", 0.1516, 112.6, Chi(2)),
            _sc("OE1", "CB", "CG", "CD", 0.1249, 118.4, Chi(3)),
            _sc("OE2", "CB", "CG", "CD", 0.1249, 118.4, Chi(3, 180.0))],
    "GLN": [_sc("CG", "N", "CA", "CB", 0.1520, 114.1, Chi(1)),
            _sc("CD", "CA", "CB", "CG", 0.1516, 112.6, Chi(2)),
            _sc("OE1", "CB", "CG", "CD", 0.1231, 120.8, Chi(3)),
            _sc("NE2", "CB", "CG", "CD", 0.1328, 116.4, Chi(3, 180.0))],
    "LYS": [_sc("CG", "N", "CA", "CB", 0.1520, 114.1, Chi(1)),
            _sc("CD", "CA", "CB", "CG", 0.1520, 111.3, Chi(2)),
            _sc("CE", "CB", "CG", "CD", 0.1520, 111.3, Chi(3)),
            _sc("NZ", "CG", "CD", "CE", 0.1489, 111.9, Chi(4))],
    "ARG": [_sc("CG", "N", "CA", "CB", 0.1520, 114.1, Chi(1)),
            _sc("CD", "CA", "CB", "CG", 0.1520, 111.3, Chi(2)),
            _sc("NE", "CB", "CG", "CD", 0.1460, 112.0, Chi(3)),
            _sc("CZ", "CG", "CD", "NE", 0.1329, 124.2, Chi(4)),
            _sc("NH1", "CD", "NE", "CZ", 0.1326, 120.0, 0.0),
            _sc("NH2", "CD", "NE", "CZ", 0.1326, 120.0, 180.0)],
}  # fmt: skip

THREE_LETTER: dict[str, str] = {
    "A": "ALA", "C": "CYS", "D": "ASP", "E": "GLU", "F": "PHE", "G": "GLY", "H": "HIS", "I": "ILE",
    "K": "LYS", "L": "LEU", "M": "MET", "N": "ASN", "P": "PRO", "Q": "GLN", "R": "ARG", "S": "SER",
    "T": "THR", "V": "VAL", "W": "TRP", "Y": "TYR",
}  # fmt: skip
"""One-letter codes of the 20 standard amino acids the builder knows."""

CHI_DEFAULTS: dict[str, tuple[float, ...]] = {
    "GLY": (), "ALA": (), "SER": (65.0,), "CYS": (-65.0,), "THR": (60.0,), "VAL": (175.0,),
    "ILE": (-65.0, 170.0), "LEU": (-65.0, 175.0), "MET": (-65.0, 180.0, 75.0), "PRO": (30.0, -32.0),
    "PHE": (-65.0, 90.0), "TYR": (-65.0, 90.0), "TRP": (-65.0, 95.0), "HIS": (-65.0, -70.0),
    "ASP": (-70.0, -15.0), "ASN": (-65.0, -40.0), "GLU": (-65.0, 180.0, -40.0),
    "GLN": (-65.0, 180.0, -25.0), "LYS": (-65.0, 180.0, 180.0, 180.0), "ARG": (-65.0, 180.0, 180.0, 180.0),
}  # fmt: skip
"""Default side-chain χ angles (degrees): common rotamers (Pro: Cγ-endo, ring closes to ~0.147 nm)."""

N_CHI: dict[str, int] = {name: len(chis) for name, chis in CHI_DEFAULTS.items()}
"""Number of χ angles of each residue."""

TERMINI = ("capped", "charged")
"""Accepted values of ``termini``."""


# ---------------------------------------------------------------------------------------------------
# NeRF


def place_atom(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, dihedral: float) -> np.ndarray:
    """Position of an atom ``d`` bonded to ``c`` with ``|cd| = bond``, angle ``b-c-d`` and dihedral ``a-b-c-d``.

    Parameters
    ----------
    a, b, c : np.ndarray
        ``(3,)`` positions of the three reference atoms (not collinear).
    bond : float
        Bond length ``|cd|`` (nm).
    angle : float
        Bond angle ``b-c-d`` in degrees.
    dihedral : float
        Dihedral ``a-b-c-d`` in degrees (IUPAC sign).

    Returns
    -------
    np.ndarray
        ``(3,)`` position of ``d``.
    """
    theta, tau = math.radians(angle), math.radians(dihedral)
    bc = c - b
    bc = bc / np.linalg.norm(bc)
    normal = np.cross(b - a, bc)
    norm = np.linalg.norm(normal)
    if norm < 1e-12:
        raise ValueError("reference atoms a, b, c are collinear: the dihedral is undefined")
    normal /= norm
    in_plane = np.cross(normal, bc)
    local = bond * np.array([-math.cos(theta), math.sin(theta) * math.cos(tau), math.sin(theta) * math.sin(tau)])
    return c + local[0] * bc + local[1] * in_plane + local[2] * normal


def cb_dihedral(angle_n_ca_c: float, angle_n_ca_cb: float, angle_c_ca_cb: float) -> float:
    """Dihedral C–N–CA–CB (degrees) of an L-amino acid that gives the requested angle C–CA–CB.

    From the spherical law of cosines at CA: ``cos(C-CA-CB) = cos α cos β + sin α sin β cos τ``
    with α = N–CA–C, β = N–CA–CB; the L configuration is the negative root.
    """
    alpha, beta, gamma = (math.radians(x) for x in (angle_n_ca_c, angle_n_ca_cb, angle_c_ca_cb))
    cos_tau = (math.cos(gamma) - math.cos(alpha) * math.cos(beta)) / (math.sin(alpha) * math.sin(beta))
    return -math.degrees(math.acos(max(-1.0, min(1.0, cos_tau))))


# ---------------------------------------------------------------------------------------------------
# The chain


@dataclass(frozen=True)
class ZMatrixRow:
    """How one atom was placed: bonded to ``c``, angle ``b-c-atom``, dihedral ``a-b-c-atom`` (atom indices)."""

    atom: int
    a: int
    b: int
    c: int
    bond: float
    angle: float
    dihedral: float


@dataclass
class Peptide:
    """A heavy-atom peptide built from internal coordinates.

    Attributes
    ----------
    sequence : str
        One-letter sequence (without caps).
    termini : str
        ``"capped"`` (ACE/NME) or ``"charged"``.
    topology : openmm.app.Topology
        One chain; residues (caps included) with PDB/Amber atom names and standard bonds.
    positions : np.ndarray
        ``(n_atoms, 3)`` positions in nm, in topology order.
    zmatrix : list of ZMatrixRow
        The internal coordinates every atom after the first three was placed with (for checks).
    """

    sequence: str
    termini: str
    topology: app.Topology
    positions: np.ndarray
    zmatrix: list[ZMatrixRow]

    def atom_index(self, residue: int, name: str) -> int:
        """Index of atom ``name`` in residue ``residue`` (0-based, counting caps as residues).

        Raises
        ------
        IndexError
            For a residue index out of range.
        KeyError
            If the residue has no atom of that name.
        """
        residues = list(self.topology.residues())
        if not 0 <= residue < len(residues):
            raise IndexError(f"residue {residue} out of range: the topology has {len(residues)} residues")
        for atom in residues[residue].atoms():
            if atom.name == name:
                return atom.index
        raise KeyError(f"residue {residue} ({residues[residue].name}) has no atom '{name}'")


def _per_residue(value: float | Sequence[float] | None, default: float, n: int, label: str) -> np.ndarray:
    array = np.full(n, default, dtype=np.float64) if value is None else np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n, float(array))
    if array.shape != (n,):
        raise ValueError(f"{label} must be a number or have one value per residue ({n}), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{label} contains non-finite values: {array}")
    return array


def _chis(residues: list[str], chi: Sequence[Sequence[float] | None] | None) -> list[tuple[float, ...]]:
    if chi is None:
        return [CHI_DEFAULTS[r] for r in residues]
    if len(chi) != len(residues):
        raise ValueError(f"chi must have one entry per residue ({len(residues)}), got {len(chi)}")
    out = []
    for i, (name, values) in enumerate(zip(residues, chi)):
        if values is None:
            out.append(CHI_DEFAULTS[name])
            continue
        values = tuple(float(v) for v in values)
        if len(values) != N_CHI[name]:
            raise ValueError(f"residue {i + 1} ({name}) has {N_CHI[name]} chi angles, got {len(values)}: {values}")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"residue {i + 1} ({name}): non-finite chi angles {values}")
        out.append(values)
    return out


def parse_sequence(sequence: str) -> list[str]:
    """Three-letter residue names of a one-letter sequence.

    Raises
    ------
    ValueError
        For an empty sequence or a letter that is not one of the 20 standard amino acids.
    """
    if not isinstance(sequence, str) or not sequence:
        raise ValueError(f"sequence must be a non-empty string of one-letter codes, got {sequence!r}")
    for i, letter in enumerate(sequence):
        if letter not in THREE_LETTER:
            raise ValueError(
                f"unknown residue letter {letter!r} at position {i + 1} of {sequence!r}; "
                f"known (upper case): {''.join(sorted(THREE_LETTER))}"
            )
    return [THREE_LETTER[letter] for letter in sequence]


Key = tuple[int, str]  # (residue index counting caps, atom name)


class _Builder:
    """Places atoms by NeRF into a name-keyed table, recording the internal coordinates used."""

    def __init__(self) -> None:
        self.positions: dict[Key, np.ndarray] = {}
        self.rows: list[tuple[Key, Key, Key, Key, float, float, float]] = []

    def fix(self, key: Key, position: np.ndarray) -> None:
        self.positions[key] = np.asarray(position, dtype=np.float64)

    def add(self, key: Key, a: Key, b: Key, c: Key, bond: float, angle: float, dihedral: float) -> None:
        p = self.positions
        self.positions[key] = place_atom(p[a], p[b], p[c], bond, angle, dihedral)
        self.rows.append((key, a, b, c, bond, angle, _wrap(dihedral)))


def _wrap(angle: float) -> float:
    """Angle in degrees wrapped to (−180, 180]."""
    wrapped = (angle + 180.0) % 360.0 - 180.0
    return 180.0 if wrapped == -180.0 else wrapped


def _get(table: dict, residue: str):
    return table.get(residue, table["default"])


def _side_chain(builder: _Builder, r: int, name: str, chis: tuple[float, ...]) -> None:
    if name == "GLY":
        return
    bond, angle_n, angle_c = _get(CB_GEOMETRY, name)
    tau = cb_dihedral(_get(ANGLE_N_CA_C, name), angle_n, angle_c)
    builder.add((r, "CB"), (r, "C"), (r, "N"), (r, "CA"), bond, angle_n, tau)
    for spec in SIDE_CHAINS[name]:
        if isinstance(spec.dihedral, Chi):
            dihedral = chis[spec.dihedral.index - 1] + spec.dihedral.offset
        else:
            dihedral = spec.dihedral
        builder.add((r, spec.name), (r, spec.a), (r, spec.b), (r, spec.c), spec.bond, spec.angle, dihedral)


def _atom_order(name: str) -> list[tuple[str, str]]:
    """(atom name, element) of a residue's heavy atoms in PDB order."""
    atoms = [("N", "N"), ("CA", "C"), ("C", "C"), ("O", "O")]
    if name != "GLY":
        atoms.append(("CB", "C"))
    return atoms + [(spec.name, spec.element) for spec in SIDE_CHAINS[name]]


def build_peptide(
    sequence: str,
    phi: float | Sequence[float] | None = None,
    psi: float | Sequence[float] | None = None,
    omega: float | Sequence[float] | None = None,
    chi: Sequence[Sequence[float] | None] | None = None,
    termini: str = "capped",
) -> Peptide:
    """Heavy atoms of a peptide with ideal bond lengths and angles and the given dihedrals.

    Parameters
    ----------
    sequence : str
        One-letter codes of standard amino acids, N- to C-terminus (e.g. ``"GYDPETGTWG"``).
    phi, psi : float or sequence of float, optional
        Backbone dihedrals in degrees, one per residue (a number applies to all). Default β-strand
        φ = −120°, ψ = 130°. See the module docstring for which values charged termini ignore.
    omega : float or sequence of float, optional
        Peptide-bond dihedral after each residue, degrees; default 180 (trans).
    chi : sequence, optional
        Per residue, its χ angles in degrees (``len == N_CHI[residue]``; ``()`` for Gly/Ala) or
        ``None`` for :data:`CHI_DEFAULTS`.
    termini : {"capped", "charged"}
        ACE/NME caps, or free NH3+/COO− termini (OXT built here).

    Returns
    -------
    Peptide
        Topology (standard bonds) and positions (nm) of the heavy atoms.

    Raises
    ------
    ValueError
        For an unknown residue letter, an empty sequence, per-residue arrays of the wrong length,
        non-finite angles, a wrong number of χ angles, or unknown ``termini``.
    """
    residues = parse_sequence(sequence)
    if termini not in TERMINI:
        raise ValueError(f"termini must be one of {TERMINI}, got {termini!r}")
    n = len(residues)
    phi_a = _per_residue(phi, -120.0, n, "phi")
    psi_a = _per_residue(psi, 130.0, n, "psi")
    omega_a = _per_residue(omega, 180.0, n, "omega")
    chis = _chis(residues, chi)
    capped = termini == "capped"
    offset = 1 if capped else 0  # topology index of residue i is i + offset

    b = _Builder()
    first = residues[0]
    if capped:
        # ACE methyl C at the origin, carbonyl C along x, residue 1's N in the xy plane; O trans to N's CA side.
        b.fix((0, "CH3"), np.zeros(3))
        b.fix((0, "C"), np.array([BOND_CAP_CH3_C, 0.0, 0.0]))
        t = math.radians(180.0 - ANGLE_CA_C_N["default"])
        b.fix((1, "N"), b.positions[0, "C"] + _get(BOND_C_N, first) * np.array([math.cos(t), math.sin(t), 0.0]))
        b.add((0, "O"), (1, "N"), (0, "CH3"), (0, "C"), BOND_C_O, ANGLE_CA_C_O, 180.0)
        b.add((1, "CA"), (0, "CH3"), (0, "C"), (1, "N"), _get(BOND_N_CA, first), _get(ANGLE_C_N_CA, first), 180.0)
        b.add((1, "C"), (0, "C"), (1, "N"), (1, "CA"), _get(BOND_CA_C, first), _get(ANGLE_N_CA_C, first), phi_a[0])
    else:  # N at the origin, N-CA along x, C in the xy plane
        b.fix((0, "N"), np.zeros(3))
        b.fix((0, "CA"), np.array([_get(BOND_N_CA, first), 0.0, 0.0]))
        t = math.radians(180.0 - _get(ANGLE_N_CA_C, first))
        b.fix((0, "C"), b.positions[0, "CA"] + _get(BOND_CA_C, first) * np.array([math.cos(t), math.sin(t), 0.0]))

    for i, name in enumerate(residues):
        r = i + offset
        if i > 0:
            p = r - 1
            b.add((r, "N"), (p, "N"), (p, "CA"), (p, "C"), _get(BOND_C_N, name), _get(ANGLE_CA_C_N, residues[i - 1]),
                  psi_a[i - 1])
            b.add((r, "CA"), (p, "CA"), (p, "C"), (r, "N"), _get(BOND_N_CA, name), _get(ANGLE_C_N_CA, name),
                  omega_a[i - 1])
            b.add((r, "C"), (p, "C"), (r, "N"), (r, "CA"), _get(BOND_CA_C, name), _get(ANGLE_N_CA_C, name), phi_a[i])
        if i == n - 1 and not capped:  # carboxylate: OXT at psi, O opposite
            b.add((r, "O"), (r, "N"), (r, "CA"), (r, "C"), BOND_C_OXT, ANGLE_CA_C_OXT, psi_a[i] + 180.0)
            b.add((r, "OXT"), (r, "N"), (r, "CA"), (r, "C"), BOND_C_OXT, ANGLE_CA_C_OXT, psi_a[i])
        else:
            b.add((r, "O"), (r, "N"), (r, "CA"), (r, "C"), BOND_C_O, ANGLE_CA_C_O, psi_a[i] + 180.0)
        _side_chain(b, r, name, chis[i])
    if capped:
        r, p = n + 1, n
        b.add((r, "N"), (p, "N"), (p, "CA"), (p, "C"), BOND_C_N["default"], _get(ANGLE_CA_C_N, residues[-1]),
              psi_a[-1])
        b.add((r, "C"), (p, "CA"), (p, "C"), (r, "N"), BOND_CAP_N_CH3, ANGLE_C_N_CA["default"], omega_a[-1])

    # topology in PDB order
    layout = [("ACE", [("CH3", "C"), ("C", "C"), ("O", "O")])] if capped else []
    layout += [(name, _atom_order(name)) for name in residues]
    if not capped:
        layout[-1][1].append(("OXT", "O"))
    if capped:
        layout.append(("NME", [("N", "N"), ("C", "C")]))
    topology = app.Topology()
    chain = topology.addChain("A")
    index: dict[Key, int] = {}
    for r, (res_name, atoms) in enumerate(layout):
        residue = topology.addResidue(res_name, chain, id=str(r + 1))
        for atom_name, element in atoms:
            index[r, atom_name] = topology.addAtom(atom_name, app.Element.getBySymbol(element), residue).index
    topology.createStandardBonds()
    if set(index) != set(b.positions):
        raise RuntimeError(f"builder tables inconsistent: {sorted(set(index) ^ set(b.positions))}")
    positions = np.empty((len(index), 3))
    for key, i in index.items():
        positions[i] = b.positions[key]
    zmatrix = [ZMatrixRow(index[k], index[a], index[b_], index[c], bond, angle, dihedral)
               for k, a, b_, c, bond, angle, dihedral in b.rows]
    return Peptide(sequence, termini, topology, positions, zmatrix)


# ---------------------------------------------------------------------------------------------------
# Hydrogens, files


def add_hydrogens(
    peptide: Peptide, forcefield: app.ForceField | Sequence[str], ph: float = 7.0
) -> tuple[app.Topology, np.ndarray]:
    """Add hydrogens (and terminal hydrogens) with OpenMM's Modeller and check the force field knows every residue.

    Parameters
    ----------
    peptide : Peptide
        A heavy-atom peptide from :func:`build_peptide`.
    forcefield : openmm.app.ForceField or sequence of str
        The force field, or its XML files, e.g. ``["amber14-all.xml", "implicit/obc2.xml"]``; its
        residue templates decide protonation variants.
    ph : float
        pH for protonation states.

    Returns
    -------
    topology : openmm.app.Topology
        All atoms.
    positions : np.ndarray
        ``(n_atoms, 3)`` positions in nm.

    Raises
    ------
    ValueError
        If a residue matches no template of the force field after adding hydrogens.
    """
    if not isinstance(forcefield, app.ForceField):
        forcefield = app.ForceField(*forcefield)
    modeller = app.Modeller(peptide.topology, peptide.positions * unit.nanometer)
    modeller.addHydrogens(forcefield, pH=ph)
    unmatched = forcefield.getUnmatchedResidues(modeller.topology)
    if unmatched:
        names = ", ".join(f"{r.name}{r.index + 1}" for r in unmatched)
        raise ValueError(f"no force field template matches residue(s) {names}")
    positions = np.asarray(modeller.getPositions().value_in_unit(unit.nanometer), dtype=np.float64)
    return modeller.topology, positions


def write_pdb(path: str | Path, topology: app.Topology, positions: np.ndarray) -> Path:
    """Write a PDB file atomically (positions in nm; residue numbers from the topology)."""
    path = Path(path)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (topology.getNumAtoms(), 3) or not np.all(np.isfinite(positions)):
        raise ValueError(f"positions must be finite with shape ({topology.getNumAtoms()}, 3), got {positions.shape}")

    def write(f) -> None:
        import io

        text = io.StringIO()
        app.PDBFile.writeFile(topology, positions * unit.nanometer, text, keepIds=True)
        f.write(text.getvalue().encode())

    atomic_write(path, write)
    return path


__all__ = [
    "CHI_DEFAULTS",
    "N_CHI",
    "THREE_LETTER",
    "Peptide",
    "ZMatrixRow",
    "add_hydrogens",
    "build_peptide",
    "cb_dihedral",
    "parse_sequence",
    "place_atom",
    "write_pdb",
]
