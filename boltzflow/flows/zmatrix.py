"""Z-matrices built from a molecular bond graph.

A Z-matrix places three *root* atoms, then every other atom ``i`` from three atoms placed before
it: a bond partner ``b``, an angle partner ``a`` and a dihedral partner ``d``, so that ``i`` is
fixed by the bond length ``|i - b|``, the angle ``i-b-a`` and the dihedral ``i-b-a-d``.

:func:`zmatrix_from_topology` works for any connected molecule: it walks the bond graph
breadth-first from the roots (heavy atoms before hydrogens, longer branches first, at each step).
The first substituent placed on a bond gets the chain torsion ``i-b-a-d``; later substituents of the
same centre take their dihedral relative to an already placed sibling (``d`` bonded to ``b``), a
stiff coordinate. Only the true rotors (backbone φ/ψ, methyl groups, side chains) stay floppy.
For peptides the roots are the backbone ``N-CA-C`` of the middle residue, which makes every
backbone φ/ψ a Z-matrix dihedral (see :attr:`ZMatrix.torsions`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import mdtraj as md
import numpy as np


@dataclass(frozen=True)
class ZMatrix:
    """Root atoms and placement rows of a Z-matrix.

    Parameters
    ----------
    root : tuple of int
        The three root atoms ``(r0, r1, r2)``; ``r0-r1`` and ``r1-r2`` are their bonds and
        ``r0-r1-r2`` their angle.
    rows : ndarray of int, shape (n_atoms - 3, 4)
        ``(atom, bond partner, angle partner, dihedral partner)`` in placement order.
    torsions : dict of str to int
        Named torsions that are Z-matrix dihedrals (e.g. ``{"phi1": 0, "psi1": 5}``, keyed by
        the residue index), mapped to their row in ``rows``.

    Raises
    ------
    ValueError
        If an atom is missing or repeated, or a partner is not placed before its atom.
    """

    root: tuple[int, int, int]
    rows: np.ndarray
    torsions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rows = np.asarray(self.rows, dtype=np.int64).reshape(-1, 4)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "root", tuple(int(r) for r in self.root))
        order = list(self.root) + rows[:, 0].tolist()
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"Z-matrix must place atoms 0..{len(order) - 1} exactly once, got order {order}")
        position = {atom: k for k, atom in enumerate(order)}
        for k, (atom, *partners) in enumerate(rows.tolist()):
            if len(set(partners) | {atom}) != 4 or any(position.get(p, len(order)) >= k + 3 for p in partners):
                raise ValueError(f"Z-matrix row {k} {[atom, *partners]}: partners must be distinct, placed earlier")

    @property
    def n_atoms(self) -> int:
        """Number of atoms placed."""
        return len(self.rows) + 3

    def dihedral_row(self, i: int, j: int, k: int, l: int) -> int | None:
        """Row whose dihedral is the torsion ``i-j-k-l`` (in either direction), or ``None``."""
        quads = self.rows.tolist()
        for wanted in ([i, j, k, l], [l, k, j, i]):
            if wanted in quads:
                return quads.index(wanted)
        return None


def _is_hydrogen(atom: md.core.topology.Atom) -> bool:
    if atom.element is not None and atom.element.symbol:
        return atom.element.symbol == "H"
    return atom.name.upper().startswith("H")


def _backbone(residue: md.core.topology.Residue | None, name: str) -> int | None:
    if residue is None:
        return None
    hits = [a.index for a in residue.atoms if a.name == name]
    return hits[0] if len(hits) == 1 else None


def _default_root(topology: md.Topology, neighbours: list[list[int]], heavy: np.ndarray) -> tuple[int, int, int]:
    """Backbone ``N-CA-C`` of the middle residue having one; else a graph centre and two neighbours."""
    candidates = []
    for residue in topology.residues:
        n, ca, c = (_backbone(residue, name) for name in ("N", "CA", "C"))
        if None not in (n, ca, c) and n in neighbours[ca] and c in neighbours[ca]:
            candidates.append((n, ca, c))
    if candidates:
        return candidates[(len(candidates) - 1) // 2]
    best = None
    for centre in range(topology.n_atoms):
        nbrs = sorted(neighbours[centre], key=lambda a: (not heavy[a], a))
        if len(nbrs) < 2:
            continue
        key = (not heavy[centre], max(_distances(neighbours, centre)), centre)
        if best is None or key < best[0]:
            best = (key, (nbrs[0], centre, nbrs[1]))
    if best is None:
        raise ValueError("no atom has two bonded neighbours: cannot choose Z-matrix root atoms")
    return best[1]


def _distances(neighbours: list[list[int]], start: int) -> list[int]:
    """Bond-graph distances from ``start`` (``len(neighbours)`` for unreachable atoms)."""
    dist = [len(neighbours)] * len(neighbours)
    dist[start] = 0
    queue = deque([start])
    while queue:
        atom = queue.popleft()
        for nbr in neighbours[atom]:
            if dist[nbr] > dist[atom] + 1:
                dist[nbr] = dist[atom] + 1
                queue.append(nbr)
    return dist


def _partners(
    atom: int, bond: int, neighbours: list[list[int]], placed: dict[int, int], heavy: np.ndarray
) -> tuple[int, int]:
    """Angle and dihedral partners for ``atom`` bonded to ``bond``.

    The angle partner is the earliest placed (heavy first) neighbour of ``bond``. If another
    neighbour of ``bond`` (a *sibling*) is already placed, the dihedral is taken relative to it,
    ``atom-bond-angle-sibling``: the rotation about the ``bond-angle`` axis between two
    substituents of one centre, a stiff coordinate (±120° on a tetrahedral centre, 180° on a
    planar one). Otherwise it is the bonded chain torsion ``atom-bond-angle-d``. So each rotatable
    bond carries exactly one floppy torsion (that of the first substituent placed), and the other
    substituents ride on it.
    """

    def rank(a: int) -> tuple[bool, int]:
        return (not heavy[a], placed[a])

    angles = sorted((a for a in neighbours[bond] if a in placed and a != atom), key=rank)
    if len(angles) >= 2:
        return angles[0], angles[1]
    for angle in angles:
        chain = [d for d in neighbours[angle] if d in placed and d not in (atom, bond)]
        if chain:
            return angle, min(chain, key=rank)
    raise ValueError(f"cannot place atom {atom}: no bonded chain or improper around atom {bond}")


def _branch_size(neighbours: list[list[int]], start: int, parent: int) -> int:
    """Atoms reachable from ``start`` without passing through ``parent`` (a ring reaches everything)."""
    seen, stack = {start, parent}, [start]
    while stack:
        for nbr in neighbours[stack.pop()]:
            if nbr not in seen:
                seen.add(nbr)
                stack.append(nbr)
    return len(seen) - 1


def _backbone_torsions(topology: md.Topology, zm: ZMatrix) -> dict[str, int]:
    residues = list(topology.residues)
    found = {}
    for prev, res, nxt in zip([None] + residues[:-1], residues, residues[1:] + [None]):
        n, ca, c = (_backbone(res, name) for name in ("N", "CA", "C"))
        c_prev, n_next = _backbone(prev, "C"), _backbone(nxt, "N")
        for name, quad in (("phi", (c_prev, n, ca, c)), ("psi", (n, ca, c, n_next))):
            row = zm.dihedral_row(*quad) if None not in quad else None
            if row is not None:
                found[f"{name}{res.index}"] = row
    return found


def zmatrix_from_topology(topology: md.Topology, root: tuple[int, int, int] | None = None) -> ZMatrix:
    """Build a Z-matrix for a connected molecule from its bond graph.

    Parameters
    ----------
    topology : mdtraj.Topology
        Atoms and bonds of one connected molecule (at least 4 atoms).
    root : tuple of int, optional
        Root atoms ``(r0, r1, r2)`` with ``r1`` bonded to ``r0`` and ``r2``. Default: the backbone
        ``N, CA, C`` of the middle residue that has them, else the heavy atom of smallest bond-graph
        eccentricity with two of its neighbours.

    Returns
    -------
    ZMatrix
        Rows in breadth-first order from the roots; ``torsions`` names the backbone φ/ψ found
        among the rows (``"phi<residue index>"``, ``"psi<residue index>"``).

    Raises
    ------
    ValueError
        If the molecule has fewer than 4 atoms, is not connected, or ``root`` is not a bonded chain.
    """
    n_atoms = topology.n_atoms
    if n_atoms < 4:
        raise ValueError(f"a Z-matrix needs at least 4 atoms, got {n_atoms}")
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in topology.bonds:
        neighbours[a.index].append(b.index)
        neighbours[b.index].append(a.index)
    heavy = np.array([not _is_hydrogen(atom) for atom in topology.atoms])
    if root is None:
        root = _default_root(topology, neighbours, heavy)
    r0, r1, r2 = (int(r) for r in root)
    if len({r0, r1, r2}) != 3 or r0 not in neighbours[r1] or r2 not in neighbours[r1]:
        raise ValueError(f"root atoms {root} must be distinct with the middle one bonded to the other two")

    placed = {r0: 0, r1: 1, r2: 2}
    rows = []
    queue = deque([r0, r1, r2])
    while queue:
        bond = queue.popleft()
        # heavy atoms first, the longest branch first: the chain continuation takes the floppy torsion
        children = sorted(neighbours[bond], key=lambda a: (not heavy[a], -_branch_size(neighbours, a, bond), a))
        for atom in children:
            if atom in placed:
                continue
            angle, dihedral = _partners(atom, bond, neighbours, placed, heavy)
            placed[atom] = len(placed)
            rows.append((atom, bond, angle, dihedral))
            queue.append(atom)
    if len(placed) != n_atoms:
        missing = sorted(set(range(n_atoms)) - set(placed))
        raise ValueError(f"molecule is not connected: atoms {missing[:10]} are not bonded to the roots")
    zm = ZMatrix((r0, r1, r2), np.array(rows, dtype=np.int64).reshape(-1, 4))
    return replace(zm, torsions=_backbone_torsions(topology, zm))
