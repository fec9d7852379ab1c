"""Training-data augmentation by the exact symmetries of a particle system's energy."""

from __future__ import annotations

import numpy as np

from ..samples import SampleSet


def random_rotations(n: int, n_dims: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` Haar-random proper rotations, shape ``(n, n_dims, n_dims)`` (QR of Gaussian matrices, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(n, n_dims, n_dims)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    flip = np.linalg.det(q) < 0
    q[flip, :, 0] *= -1.0
    return q


def augment_particle_symmetries(data: SampleSet, n_particles: int, n_dims: int, seed: int = 0) -> SampleSet:
    """Each frame rotated by a random proper rotation (about its centre) and its particles randomly permuted.

    For identical particles with an energy that depends only on interparticle distances (DW4, LJ
    clusters), the Boltzmann distribution is invariant under rotations and permutations, but MCMC
    chains started from one configuration explore those symmetry copies slowly. Training a
    (non-equivariant) flow on the augmented frames teaches it the symmetric density; the frames'
    energies and weights are unchanged.

    Parameters
    ----------
    data : SampleSet
        Frames ``(N, n_particles * n_dims)``.
    n_particles, n_dims : int
        Particle layout.
    seed : int
        Random seed.

    Returns
    -------
    SampleSet
        Same length, energies, weights, chains and times.
    """
    if data.dim != n_particles * n_dims:
        raise ValueError(f"data has dimension {data.dim}, not {n_particles} particles x {n_dims} dimensions")
    rng = np.random.default_rng(seed)
    p = data.x.reshape(len(data), n_particles, n_dims)
    centre = p.mean(1, keepdims=True)
    rotated = np.einsum("bij,bkj->bki", random_rotations(len(data), n_dims, rng), p - centre) + centre
    order = np.argsort(rng.random((len(data), n_particles)), axis=1)
    permuted = np.take_along_axis(rotated, order[:, :, None], axis=1)
    return SampleSet(x=permuted.reshape(len(data), -1), energies=data.energies, log_weights=data.log_weights,
                     chain=data.chain, time=data.time,
                     metadata={**data.metadata, "augmented": "rotations+permutations"})


__all__ = ["augment_particle_symmetries", "random_rotations"]
