"""Neutra-MCMC: HMC or MALA in a flow's latent space on the pulled-back target, samples mapped back.

With the flow's generative map ``x = T(z)``, the target ``exp(−u(x))`` pulled back to the latent
space is ``exp(−u(T(z)) + log|det J_T(z)|)``. A good flow makes this potential nearly the standard
normal one, so plain HMC (or MALA) with unit masses mixes fast there; a poor flow still gives an
exact sampler, only a slower one. The chains are driven by :func:`.hmc.run_hmc_chains` (step sizes
adapted in warm-up only); each stored ``z`` is mapped back with ``T`` and carries the true
energy ``u(T(z))``. The latent potential's gradient flows through the energy's forces and the
flow by autograd.

Circular latent features (angles of molecular flows, uniform on ``[low, high)`` in the base) make
the latent space a torus × ``R^k``. A flow built for them (circular splines, conditioners fed
``(cos, sin)``) is periodic in them, so the pulled-back target is a density on that torus; this is
checked at the start (:func:`check_periodic_latent`), and a flow that fails is refused. The moves
(:class:`LatentTorus`) then wrap the circular coordinates into ``[low, high)`` after every move:

* HMC: the leapfrog map of a periodic potential commutes with shifts by a period, so wrapping
  positions keeps it volume preserving and reversible on the torus, and the Hamiltonian (hence the
  acceptance) is the same as for the unwrapped trajectory;
* MALA: the proposal ``y = wrap(z − h∇u(z) + √(2h)ξ)`` has the *wrapped* Gaussian density on the
  circular coordinates, ``Σ_k N(y + kP; z − h∇u, 2h)`` (``P`` the period), which enters the
  Metropolis–Hastings ratio (see :meth:`LatentTorus.mala_log_density`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..energy.base import Energy
from ..flows.distributions import FlowDistribution
from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint
from .flow import resolve_model
from .hmc import Kernel, chain_columns, run_hmc_chains
from .local_kernels import LocalMove, Potential, hmc_step, mala_step
from .metadata import run_metadata

KERNELS = ("hmc", "mala")
# Periodic images of the wrapped Gaussian are kept while they can matter at float64 precision:
# the first image left out is below exp(−_IMAGE_CUT) ≈ 4e-18 of the largest term.
_IMAGE_CUT = 40.0


def latent_potential(flow: FlowDistribution, energy: Energy) -> Potential:
    """The pulled-back reduced potential ``u(T(z)) − log|det J_T(z)|`` and its gradient in ``z``.

    Parameters
    ----------
    flow : FlowDistribution
        Flow whose ``bijection.forward`` is ``T``.
    energy : Energy
        Target reduced energy on configurations ``x``.

    Returns
    -------
    Potential
        ``z (B, d) -> (u_z (B,), du_z/dz (B, d))`` on float64 numpy arrays; rows where ``T(z)``,
        the energy, the log-determinant or the gradient is not finite get ``+inf`` and a zero
        gradient.
    """
    device = next(flow.buffers()).device
    dtype = flow.base.dtype

    def potential(z_np: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = torch.as_tensor(z_np, dtype=dtype, device=device).requires_grad_(True)
        with torch.enable_grad():
            x, logdet = flow.bijection.forward(z)
            total = energy(x) - logdet
            (grad,) = torch.autograd.grad(total.sum(), z)
        u = total.detach().cpu().to(torch.float64).numpy()
        g = grad.detach().cpu().to(torch.float64).numpy()
        bad = ~(np.isfinite(u) & np.isfinite(g).all(axis=1))
        if bad.any():
            u, g = u.copy(), g.copy()
            u[bad], g[bad] = np.inf, 0.0
        return u, g

    return potential


class LatentTorus:
    """The circular coordinates of a flow's latent space: wrapping and the wrapped MALA proposal.

    Parameters
    ----------
    circular : np.ndarray
        ``(d,)`` bool, which latent features are angles.
    low, high : np.ndarray
        ``(d,)`` period ``[low, high)`` of each feature (entries of linear features unused).
    """

    def __init__(self, circular: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
        self.circular = np.asarray(circular, dtype=bool)
        self.low = np.asarray(low, dtype=np.float64)[self.circular]
        self.period = np.asarray(high, dtype=np.float64)[self.circular] - self.low
        if not (self.period > 0).all():
            raise ValueError("each circular feature needs low < high")

    @classmethod
    def of(cls, flow: FlowDistribution) -> LatentTorus:
        """The torus of a flow's base distribution."""
        base = flow.base
        if not hasattr(base, "circular"):  # e.g. rigid-body flows: unit quaternions, not a torus × R^k
            raise ValueError(
                f"neutra needs a flow whose latent space is a torus × R^k; this flow's base is "
                f"{type(base).__name__} (a rigid-body flow?): use the 'imh' or 'isir' sampler"
            )
        return cls(base.circular.cpu().numpy(), base.low.numpy(), base.high.numpy())

    @property
    def n_circular(self) -> int:
        """Number of circular features."""
        return int(self.circular.sum())

    def wrap(self, z: np.ndarray) -> np.ndarray:
        """``z (B, d)`` with its circular coordinates mapped into ``[low, high)`` (linear ones untouched)."""
        if not self.n_circular:
            return z
        angles = self.low + np.mod(z[:, self.circular] - self.low, self.period)
        # np.mod of a tiny negative number can round up to a whole period
        angles = np.where(angles >= self.low + self.period, self.low, angles)
        out = np.array(z, dtype=np.float64)
        out[:, self.circular] = angles
        return out

    def n_images(self, h: float) -> int:
        """``K``: the wrapped Gaussian of variance ``2h`` is summed over the images ``k = −K..K``.

        With the offset reduced to ``|d| <= P/2``, the largest term is ``k = 0`` and the image
        ``k`` is smaller by at least ``exp(−P² |k|(|k| − 1) / (4h))``. ``K`` is the smallest
        integer (at least 1) with ``P² K(K + 1) / (4h) >= 40``, so the first image left out, and
        with it the whole remaining tail, is below ``1e-17`` of the sum: the density is exact to
        float64 precision. For the period ``2π`` this keeps ``k ∈ {−1, 0, 1}`` up to ``h ≈ 0.49``.
        """
        if not self.n_circular:
            return 0
        bound = _IMAGE_CUT * 4.0 * h / float(self.period.min()) ** 2  # need K(K + 1) >= bound
        return max(1, math.ceil((math.sqrt(1.0 + 4.0 * bound) - 1.0) / 2.0))

    def mala_log_density(self, to: np.ndarray, frm: np.ndarray, grad_frm: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Log density of the wrapped MALA proposal ``to | frm``, up to a constant shared by both directions.

        Linear features: ``−|d|² / (4h)`` with ``d = to − (frm − h∇u(frm))``; circular features:
        ``log Σ_{k=−K..K} exp(−(d + kP)² / (4h))`` with ``d`` reduced to ``[−P/2, P/2)`` and ``K``
        from :meth:`n_images` for the largest step in ``h``.

        Parameters
        ----------
        to, frm, grad_frm : np.ndarray
            ``(B, d)`` end point, start point and potential gradient at the start.
        h : np.ndarray
            ``(B,)`` step sizes.

        Returns
        -------
        np.ndarray
            ``(B,)``.
        """
        diff = to - frm + h[:, None] * grad_frm
        four_h = 4.0 * h[:, None]
        log_q = -(diff[:, ~self.circular] ** 2 / four_h).sum(1)
        if self.n_circular:
            d = diff[:, self.circular]
            d = d - self.period * np.floor(d / self.period + 0.5)
            k = np.arange(-self.n_images(float(h.max())), self.n_images(float(h.max())) + 1)
            images = d[:, :, None] + k * self.period[:, None]
            terms = -(images**2) / four_h[:, :, None]
            top = terms.max(axis=2)
            log_q = log_q + (top + np.log(np.exp(terms - top[:, :, None]).sum(axis=2))).sum(1)
        return log_q

    def mala_step(
        self, potential: Potential, z: np.ndarray, u: np.ndarray, g: np.ndarray, h: np.ndarray,
        rng: np.random.Generator,
    ) -> LocalMove:
        """One MALA step of every chain on the torus × ``R^k``, with the wrapped proposal density.

        ``y = wrap(z − h∇u(z) + √(2h)ξ)``, accepted with the Metropolis–Hastings ratio of the
        wrapped Gaussian densities (:meth:`mala_log_density`). Proposals of non-finite potential
        are rejected and counted as divergent.
        """
        return mala_step(potential, z, u, g, h, rng, wrap=self.wrap, log_q=self.mala_log_density)

    def hmc_step(
        self, potential: Potential, z: np.ndarray, u: np.ndarray, g: np.ndarray, h: np.ndarray,
        rng: np.random.Generator, n_leapfrog: int, jitter: float,
    ) -> LocalMove:
        """One HMC step of every chain (:func:`.local_kernels.hmc_step`) with wrapped positions.

        The potential is evaluated at wrapped positions and the end point is wrapped. For a
        potential periodic in the circular coordinates this is the leapfrog with positions wrapped
        after every drift: gradients, energies and hence the acceptance are those of the unwrapped
        trajectory, which is volume preserving and reversible.
        """
        move = hmc_step(lambda y: potential(self.wrap(y)), z, u, g, h, n_leapfrog, rng, jitter)
        return move._replace(x=self.wrap(move.x))


def check_periodic_latent(
    potential: Potential, points: np.ndarray, torus: LatentTorus, delta: float = 1e-6, rtol: float = 1e-6
) -> float:
    """Check that the pulled-back potential is continuous across the seam of each circular coordinate.

    Wrapping is only right for a potential that is periodic in the circular latent coordinates.
    The map of a circular spline is periodic inside ``[low, high)`` by construction, so the test
    that matters is the seam: for each point and circular feature ``j``, the potential at
    ``z_j = high − δ`` and ``z_j = low + δ`` must agree within the first-order change
    ``δ (|∂_j u(high − δ)| + |∂_j u(low + δ)|)`` (times 4), plus ``rtol (1 + |u|)``. A flow that
    treats an angle as a linear feature (an affine standardisation of it, an MLP fed the raw angle)
    fails.

    Parameters
    ----------
    potential : Potential
        The latent potential.
    points : np.ndarray
        ``(M, d)`` latent points to test at (rows with non-finite potential are skipped).
    torus : LatentTorus
        The circular features.
    delta, rtol : float
        Distance from the seam, relative tolerance.

    Returns
    -------
    float
        The largest seam mismatch relative to its tolerance (``<= 1``).

    Raises
    ------
    ValueError
        If the potential jumps at a seam, or no test point has a finite potential on both sides.
    """
    columns = np.flatnonzero(torus.circular)
    m = points.shape[0]
    high_side = np.repeat(points[None], len(columns), axis=0)
    low_side = high_side.copy()
    for i, j in enumerate(columns):
        high_side[i, :, j] = torus.low[i] + torus.period[i] - delta
        low_side[i, :, j] = torus.low[i] + delta
    u, g = potential(np.concatenate([high_side, low_side]).reshape(-1, points.shape[1]))
    u, g = u.reshape(2, len(columns), m), g.reshape(2, len(columns), m, -1)
    worst = 0.0
    for i, j in enumerate(columns):
        slope = np.abs(g[:, i, :, j]).sum(0)
        finite = np.isfinite(u[:, i]).all(0)
        if not finite.any():
            raise ValueError(
                f"cannot check that the latent target is periodic in circular feature {j}: the potential is not "
                f"finite at any test point"
            )
        gap = np.abs(u[0, i, finite] - u[1, i, finite])
        tolerance = 4.0 * delta * slope[finite] + rtol * (1.0 + np.abs(u[0, i, finite]))
        ratio = float((gap / tolerance).max())
        if ratio > 1.0:
            raise ValueError(
                f"the latent target is not periodic in circular feature {j} (it jumps by {float(gap.max()):.3g} kT "
                f"across the seam of its period): the flow must treat that angle as circular (circular splines, (cos, sin) "
                f"conditioners); use the 'imh' or 'isir' sampler for this flow"
            )
        worst = max(worst, ratio)
    return worst


def sample_neutra(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | FlowDistribution | None = None,
    n_chains: int = 32,
    thin: int = 1,
    warmup: int = 500,
    step_size: float = 0.1,
    n_leapfrog: int = 10,
    target_acceptance: float = 0.65,
    jitter: float = 0.2,
    kernel: str = "hmc",
    batch_size: int = 1024,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Sample ``exp(−u)`` with HMC or MALA chains in the latent space of a flow (neutra-MCMC).

    Parameters
    ----------
    system : System
        Target (its energy must provide gradients).
    n : int
        Number of samples returned (split over the chains, chain-major order).
    seed : int
        Seed of the numpy random generator.
    model : path or FlowDistribution, optional
        A model file written by :func:`~boltzflow.flows.models.save_model`, or a flow object.
        Default: the model shipped for a built-in system (see :func:`.flow.resolve_model`).
    n_chains : int
        Number of chains, evaluated as one batch, all started at ``T⁻¹(system.x0)``.
    thin : int
        HMC iterations between stored samples.
    warmup : int
        Iterations of burn-in and step-size adaptation (discarded).
    step_size : float
        Initial step in latent units: the leapfrog step ``ε`` (HMC; about 1 for a perfect flow's
        standard normal), or ``h`` of the MALA proposal ``z − h∇u + √(2h)ξ``.
    n_leapfrog : int
        Leapfrog steps per trajectory (HMC only).
    target_acceptance : float
        Acceptance probability the warm-up adapts toward.
    jitter : float
        Relative uniform jitter of the step size per trajectory (``0 <= jitter < 1``; HMC only).
    kernel : {"hmc", "mala"}
        Latent move. Circular latent coordinates are wrapped after every move; MALA uses the
        wrapped Gaussian proposal density on them (see :class:`LatentTorus`).
    batch_size : int
        Latent samples mapped back through the flow per batch at the end.
    progress : bool
        Show a progress bar with the acceptance rate.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Unweighted, correlated samples ``x = T(z)`` with their true energies ``u(x)``, ``chain``
        and ``time`` (iteration) columns; metadata as for :func:`.hmc.sample_hmc` (step sizes in
        latent units; ``n_leapfrog`` is 1 for MALA: one gradient per iteration) plus the model,
        the kernel, the number of circular latent features and ``periodicity_check``, the largest
        seam mismatch of :func:`check_periodic_latent` relative to its tolerance.

    Raises
    ------
    ValueError
        Without a model for a system that ships none, for an unknown kernel, when the latent target
        is not periodic in the circular latent features, or when ``T⁻¹(system.x0)`` or its
        potential is not finite.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown neutra kernel '{kernel}'; choose one of {', '.join(KERNELS)}")
    flow, model_name = resolve_model(system, model)
    if n < 1 or n_chains < 1 or batch_size < 1:
        raise ValueError("n, n_chains and batch_size must be >= 1")
    n_chains = min(n_chains, n)
    per_chain = math.ceil(n / n_chains)
    ckpt = Checkpoint(
        checkpoint,
        run={"system": system.name, "sampler": "neutra", "n": n, "seed": seed, "model": model_name,
             "n_chains": n_chains, "thin": thin, "warmup": warmup, "step_size": step_size,
             "n_leapfrog": n_leapfrog, "target_acceptance": target_acceptance, "jitter": jitter,
             "kernel": kernel},
        every_seconds=checkpoint_seconds,
    )
    flow.eval()
    device, dtype = next(flow.buffers()).device, flow.base.dtype
    with torch.no_grad():
        z0, _ = flow.bijection.inverse(torch.as_tensor(system.x0[None], dtype=dtype, device=device))
    torus = LatentTorus.of(flow)
    z0 = torus.wrap(z0.cpu().to(torch.float64).numpy())
    if not np.isfinite(z0).all():
        raise ValueError(f"the flow's inverse is not finite at the starting configuration of '{system.name}'")
    potential = latent_potential(flow, system.energy)
    periodicity = None
    if torus.n_circular:
        with torch.no_grad():
            probes = flow.base.sample(7, torch.Generator(device=device).manual_seed(0))
        points = np.concatenate([z0, probes.cpu().to(torch.float64).numpy()])
        periodicity = check_periodic_latent(potential, points, torus)
    step: Kernel
    if kernel == "mala":
        step = torus.mala_step
    else:
        def step(potential: Potential, z: np.ndarray, u: np.ndarray, g: np.ndarray, h: np.ndarray,
                 rng: np.random.Generator) -> LocalMove:
            return torus.hmc_step(potential, z, u, g, h, rng, n_leapfrog, jitter)
    latent, _, diagnostics = run_hmc_chains(
        potential, np.repeat(z0, n_chains, axis=0), per_chain, seed, thin, warmup, step_size,
        n_leapfrog if kernel == "hmc" else 1, target_acceptance, jitter, progress, ckpt,
        f"neutra-{kernel} {system.name}", kernel=step,
    )
    z = latent.reshape(-1, latent.shape[-1])[:n]
    x = np.empty((n, system.dim))
    with torch.no_grad():
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            xb, _ = flow.bijection.forward(torch.as_tensor(z[rows], dtype=dtype, device=device))
            x[rows] = xb.cpu().to(torch.float64).numpy().reshape(-1, system.dim)
    chain, time = chain_columns(n, n_chains, per_chain, thin)
    return SampleSet(
        x=x,
        energies=system.energy.evaluate(x, need_gradient=False).energy,
        chain=chain,
        time=time,
        metadata=run_metadata(
            system, "neutra", seed, correlated=True, normalized_proposal=False, checkpoint=ckpt,
            model=model_name, kernel=kernel, n_circular=torus.n_circular, periodicity_check=periodicity,
            n_chains=n_chains, thin=thin, warmup=warmup, **diagnostics,
        ),
    )
