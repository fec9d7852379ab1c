"""Batched local Metropolis kernels (MALA, HMC) on any potential, and warm-up step-size adaptation.

A *potential* is a function ``x (B, d) -> (u (B,), du/dx (B, d))`` in reduced units with the
failure convention of :meth:`boltzflow.energy.base.Energy.evaluate`: a row that cannot be evaluated
has ``u = +inf`` and a zero gradient. The target energy is one (:func:`target_potential`); the
neutra sampler's pulled-back latent potential is another. Each kernel takes one step of every
chain at once, leaves ``exp(−u)`` invariant for fixed step sizes, and never accepts a state with
non-finite energy. Step sizes are per chain; :class:`DualAveraging` adapts them toward a target
acceptance during warm-up only, and the samplers freeze them afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ..energy.base import Energy

Potential = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``x (B, d) -> (u (B,), du/dx (B, d))``; failed rows: ``u = +inf``, zero gradient."""


class LocalMove(NamedTuple):
    """Result of one batched local step.

    Attributes
    ----------
    x, u, g : np.ndarray
        New states ``(B, d)``, their potentials ``(B,)`` and gradients ``(B, d)`` (the old ones
        where rejected).
    accepted : np.ndarray
        ``(B,)`` bool, which chains moved.
    accept_prob : np.ndarray
        ``(B,)`` Metropolis acceptance probabilities ``min(1, exp(log α))`` (0 where undefined);
        the adaptation signal.
    n_divergent : int
        Proposals (or trajectories) that reached a non-finite potential; always rejected.
    """

    x: np.ndarray
    u: np.ndarray
    g: np.ndarray
    accepted: np.ndarray
    accept_prob: np.ndarray
    n_divergent: int


def target_potential(energy: Energy) -> Potential:
    """The reduced energy of a system as a potential (energies and forces in one batched call)."""

    def potential(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = energy.evaluate(x, need_gradient=True)
        return result.energy, result.gradient

    return potential


def _metropolis(
    log_alpha: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Accept where ``log U < log α``; NaN/-inf never accept. Returns ``(accepted, min(1, α))``."""
    log_alpha = np.where(np.isnan(log_alpha), -np.inf, log_alpha)
    accepted = np.log(rng.uniform(size=log_alpha.shape[0])) < log_alpha
    return accepted, np.exp(np.minimum(log_alpha, 0.0))


def _mala_log_q(to: np.ndarray, frm: np.ndarray, grad_frm: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Log density of the MALA proposal ``to | frm`` up to a constant shared by both directions."""
    diff = to - frm + h[:, None] * grad_frm
    return -(diff**2).sum(1) / (4.0 * h)


def mala_step(
    potential: Potential,
    x: np.ndarray,
    u: np.ndarray,
    g: np.ndarray,
    h: np.ndarray,
    rng: np.random.Generator,
    wrap: Callable[[np.ndarray], np.ndarray] | None = None,
    log_q: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> LocalMove:
    """One Metropolis-adjusted Langevin step of every chain.

    Proposal ``y = x − h ∇u(x) + sqrt(2h) ξ``, accepted with the Metropolis–Hastings ratio of the
    two Gaussian proposal densities. On a space with periodic coordinates, ``wrap`` maps the
    proposal back into the fundamental domain and ``log_q`` is the matching (wrapped) proposal
    density.

    Parameters
    ----------
    potential : Potential
        Reduced potential with gradient.
    x, u, g : np.ndarray
        Current states ``(B, d)`` (finite potentials ``u``) and gradients.
    h : np.ndarray
        ``(B,)`` step sizes.
    rng : np.random.Generator
        Random stream.
    wrap : callable, optional
        ``wrap(y)``: proposals into the fundamental domain (default: none).
    log_q : callable, optional
        ``log_q(to, frm, grad_frm, h)``: log proposal density up to a constant shared by both
        directions (default: the Gaussian of ``R^d``).

    Returns
    -------
    LocalMove
    """
    log_q = _mala_log_q if log_q is None else log_q
    noise = rng.standard_normal(x.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        y = x - h[:, None] * g + np.sqrt(2.0 * h)[:, None] * noise
        y = y if wrap is None else wrap(y)
        u_y, g_y = potential(y)
        failed = ~np.isfinite(u_y)
        log_alpha = u - u_y + log_q(x, y, g_y, h) - log_q(y, x, g, h)
    log_alpha[failed] = -np.inf
    accepted, prob = _metropolis(log_alpha, rng)
    return LocalMove(
        x=np.where(accepted[:, None], y, x),
        u=np.where(accepted, u_y, u),
        g=np.where(accepted[:, None], g_y, g),
        accepted=accepted,
        accept_prob=prob,
        n_divergent=int(np.count_nonzero(failed)),
    )


def hmc_step(
    potential: Potential,
    x: np.ndarray,
    u: np.ndarray,
    g: np.ndarray,
    h: np.ndarray,
    n_leapfrog: int,
    rng: np.random.Generator,
    jitter: float = 0.0,
) -> LocalMove:
    """One Hamiltonian Monte Carlo step of every chain (unit masses, leapfrog, Metropolis correction).

    A trajectory that meets a non-finite potential anywhere is *divergent* and rejected; the
    leapfrog map is reversible, so the reverse trajectory diverges too and the kernel stays exact.
    With ``n_leapfrog = 1`` this is MALA with step ``h²/2``.

    Parameters
    ----------
    potential : Potential
        Reduced potential with gradient.
    x, u, g : np.ndarray
        Current states ``(B, d)`` (finite potentials ``u``) and gradients.
    h : np.ndarray
        ``(B,)`` leapfrog step sizes.
    n_leapfrog : int
        Leapfrog steps per trajectory (one potential evaluation each).
    rng : np.random.Generator
        Random stream (momenta, jitter, acceptance).
    jitter : float
        Each chain's step size is multiplied by a fresh ``Uniform(1 − jitter, 1 + jitter)`` factor
        per trajectory (independent of the state, so exactness is kept), which breaks the
        resonances of a fixed trajectory length.

    Returns
    -------
    LocalMove
    """
    n = x.shape[0]
    momentum = rng.standard_normal(x.shape)
    step = h * (1.0 + jitter * (2.0 * rng.uniform(size=n) - 1.0)) if jitter > 0 else h
    step_col = step[:, None]
    divergent = np.zeros(n, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        h0 = u + 0.5 * (momentum**2).sum(1)
        p = momentum - 0.5 * step_col * g
        y, u_y, g_y = x, u, g
        for i in range(n_leapfrog):
            y = y + step_col * p
            u_y, g_y = potential(y)
            divergent |= ~np.isfinite(u_y)
            p = p - (step_col if i < n_leapfrog - 1 else 0.5 * step_col) * g_y
        log_alpha = h0 - (u_y + 0.5 * (p**2).sum(1))
    log_alpha[divergent] = -np.inf
    accepted, prob = _metropolis(log_alpha, rng)
    return LocalMove(
        x=np.where(accepted[:, None], y, x),
        u=np.where(accepted, u_y, u),
        g=np.where(accepted[:, None], g_y, g),
        accepted=accepted,
        accept_prob=prob,
        n_divergent=int(np.count_nonzero(divergent)),
    )


class DualAveraging:
    """Per-chain step sizes adapted toward a target acceptance (Hoffman & Gelman 2014, dual averaging).

    Call :meth:`update` after every warm-up step with the acceptance probabilities; :attr:`step_size`
    is the step to use next. After warm-up use :meth:`final`, the averaged iterate, and stop
    updating (frozen step sizes keep the chains exact).

    Parameters
    ----------
    step_size : float or np.ndarray
        Initial step size(s); the iterates are shrunk toward ``10 × step_size``.
    n_chains : int
        Number of chains.
    target : float
        Target acceptance probability.
    gamma, t0, kappa : float
        Dual-averaging constants (defaults as in Stan).
    """

    def __init__(
        self,
        step_size: float | np.ndarray,
        n_chains: int,
        target: float,
        gamma: float = 0.05,
        t0: float = 10.0,
        kappa: float = 0.75,
    ) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target acceptance must be in (0, 1), got {target}")
        h = np.broadcast_to(np.asarray(step_size, dtype=np.float64), (n_chains,)).copy()
        if not (np.isfinite(h).all() and (h > 0).all()):
            raise ValueError("step sizes must be positive and finite")
        self.target, self.gamma, self.t0, self.kappa = float(target), gamma, t0, kappa
        self.mu = np.log(10.0 * h)
        self.log_h = np.log(h)
        self.log_h_bar = np.log(h)
        self.error_bar = np.zeros(n_chains)
        self.count = 0

    @property
    def step_size(self) -> np.ndarray:
        """Current (adapting) step sizes ``(n_chains,)``."""
        return np.exp(self.log_h)

    def update(self, accept_prob: np.ndarray) -> None:
        """One adaptation step from the acceptance probabilities ``(n_chains,)`` of the last move."""
        self.count += 1
        m = self.count
        w = 1.0 / (m + self.t0)
        self.error_bar = (1.0 - w) * self.error_bar + w * (self.target - accept_prob)
        self.log_h = self.mu - math.sqrt(m) / self.gamma * self.error_bar
        eta = m ** (-self.kappa)
        self.log_h_bar = eta * self.log_h + (1.0 - eta) * self.log_h_bar

    def final(self) -> np.ndarray:
        """The adapted step sizes to freeze: the averaged iterate (the initial ones without updates)."""
        return np.exp(self.log_h_bar)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint (see :meth:`load`)."""
        return {
            "da_mu": self.mu, "da_log_h": self.log_h, "da_log_h_bar": self.log_h_bar,
            "da_error_bar": self.error_bar, "da_count": np.array(self.count),
        }

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the state written by :meth:`state`."""
        self.mu, self.log_h = arrays["da_mu"], arrays["da_log_h"]
        self.log_h_bar, self.error_bar = arrays["da_log_h_bar"], arrays["da_error_bar"]
        self.count = int(arrays["da_count"])
