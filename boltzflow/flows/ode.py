"""Fixed-step RK4 for velocity fields ``v(x, t)``, with the log-density change along the path.

Along a path of ``dx/dt = v(x, t)`` the log-volume changes as ``d log|det ∂x(t)/∂x(t0)| / dt =
div v(x(t), t)`` (Liouville). :func:`rk4_with_divergence` integrates it together with ``x`` by the
same RK4 stages, the divergence given by

* :func:`exact_divergence` — the trace of the full Jacobian ``∂v/∂x`` at every stage (``D``
  vector-Jacobian products, vectorised by ``torch.func``): the cost that makes exact densities of
  continuous flows expensive in high dimension;
* :class:`HutchinsonDivergence` — ``mean_p ε_pᵀ (∂v/∂x) ε_p`` with ``n`` probes (Rademacher or
  Gaussian) drawn once per path and kept for all its stages (one vector-Jacobian product per probe
  and stage): an unbiased estimate of the integrated divergence, so ``exp`` of it is biased.

Velocities map ``(x (B, D), t (B,))`` to ``(B, D)``; time runs from ``t0`` to ``t1`` in
``n_steps`` equal steps (``t1 < t0`` integrates backward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PROBES = ("rademacher", "gaussian")


class Divergence(Protocol):
    """``divergence(velocity, x, t) -> (v, div)``: the velocity and its divergence (or an estimate), ``(B, D)``, ``(B,)``."""

    def __call__(self, velocity: Velocity, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...


def _check(x: torch.Tensor, n_steps: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"expected states of shape (batch, dim), got {tuple(x.shape)}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")


def rk4(velocity: Velocity, x: torch.Tensor, t0: float, t1: float, n_steps: int) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t)`` from ``t0`` to ``t1`` with ``n_steps`` classical RK4 steps.

    Parameters
    ----------
    velocity : callable
        ``v(x (B, D), t (B,)) -> (B, D)``.
    x : torch.Tensor
        ``(B, D)`` states at ``t0``.
    t0, t1 : float
        Start and end time.
    n_steps : int
        Number of equal steps.

    Returns
    -------
    torch.Tensor
        ``(B, D)`` states at ``t1``.
    """
    _check(x, n_steps)
    h = (t1 - t0) / n_steps
    for i in range(n_steps):
        x = rk4_step(velocity, x, t0 + i * h, h)
    return x


def rk4_step(velocity: Velocity, x: torch.Tensor, t: float, h: float) -> torch.Tensor:
    """One classical RK4 step of ``dx/dt = v(x, t)`` from time ``t`` to ``t + h`` (``h < 0``: backward).

    Parameters
    ----------
    velocity : callable
        ``v(x (B, D), t (B,)) -> (B, D)``.
    x : torch.Tensor
        ``(B, D)`` states at ``t``.
    t, h : float
        Start time and step.

    Returns
    -------
    torch.Tensor
        ``(B, D)`` states at ``t + h``.
    """
    t = x.new_full((x.shape[0],), t)
    k1 = velocity(x, t)
    k2 = velocity(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = velocity(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = velocity(x + h * k3, t + h)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def rk4_with_divergence(
    velocity: Velocity, x: torch.Tensor, t0: float, t1: float, n_steps: int, divergence: Divergence
) -> tuple[torch.Tensor, torch.Tensor]:
    """RK4 on the augmented state ``(x, L)`` with ``dL/dt = div v``: the states and ``∫ div v dt``.

    ``L(t1)`` approximates ``log|det ∂x(t1)/∂x(t0)|`` of the exact flow map (error of the RK4
    quadrature; exact for a constant divergence such as that of a linear field).

    Parameters
    ----------
    velocity : callable
        ``v(x (B, D), t (B,)) -> (B, D)``.
    x : torch.Tensor
        ``(B, D)`` states at ``t0``.
    t0, t1 : float
        Start and end time.
    n_steps : int
        Number of equal steps.
    divergence : callable
        :func:`exact_divergence` or a :class:`HutchinsonDivergence`.

    Returns
    -------
    x : torch.Tensor
        ``(B, D)`` states at ``t1`` (identical to :func:`rk4`).
    log_det : torch.Tensor
        ``(B,)`` the integrated divergence from ``t0`` to ``t1``.
    """
    _check(x, n_steps)
    h = (t1 - t0) / n_steps
    log_det = x.new_zeros(x.shape[0])
    for i in range(n_steps):
        t = x.new_full((x.shape[0],), t0 + i * h)
        k1, d1 = divergence(velocity, x, t)
        k2, d2 = divergence(velocity, x + 0.5 * h * k1, t + 0.5 * h)
        k3, d3 = divergence(velocity, x + 0.5 * h * k2, t + 0.5 * h)
        k4, d4 = divergence(velocity, x + h * k3, t + h)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        log_det = log_det + (h / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4)
    return x, log_det


def exact_divergence(
    velocity: Velocity, x: torch.Tensor, t: torch.Tensor, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The velocity and the exact trace of its Jacobian, per sample (``D`` vector-Jacobian products each).

    Parameters
    ----------
    velocity : callable
        ``v(x (B, D), t (B,)) -> (B, D)``; must treat batch rows independently.
    x : torch.Tensor
        ``(B, D)``.
    t : torch.Tensor
        ``(B,)``.
    chunk_size : int, optional
        Samples whose ``(D, D)`` Jacobians are formed at once (memory ``chunk_size · D²``).

    Returns
    -------
    v : torch.Tensor
        ``(B, D)``, detached.
    div : torch.Tensor
        ``(B,)`` ``tr ∂v/∂x``.
    """

    def single(xi: torch.Tensor, ti: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = velocity(xi[None], ti[None])[0]
        return out, out

    jacobian = torch.func.vmap(torch.func.jacrev(single, has_aux=True), chunk_size=chunk_size)
    with torch.enable_grad():
        jac, v = jacobian(x.detach(), t.detach())
    return v.detach(), jac.diagonal(dim1=-2, dim2=-1).sum(-1).detach()


class HutchinsonDivergence:
    """Hutchinson's estimate ``mean_p ε_pᵀ (∂v/∂x) ε_p`` with probes fixed for a whole path.

    Parameters
    ----------
    probes : torch.Tensor
        ``(n_probes, B, D)`` probe vectors (see :meth:`draw`), reused at every stage of the path so
        that the integrated estimate is unbiased for the integrated divergence.
    differentiable : bool
        Keep the graph (second-order autograd through the velocity) so that the estimate can be
        differentiated with respect to the path's start and the probes; default: detached values.
    """

    def __init__(self, probes: torch.Tensor, differentiable: bool = False) -> None:
        if probes.ndim != 3 or probes.shape[0] < 1:
            raise ValueError(f"probes must have shape (n_probes >= 1, batch, dim), got {tuple(probes.shape)}")
        self.probes = probes
        self.differentiable = differentiable

    @classmethod
    def draw(
        cls, n_probes: int, like: torch.Tensor, kind: str = "rademacher", generator: torch.Generator | None = None
    ) -> HutchinsonDivergence:
        """Fresh probes for a batch shaped like ``like (B, D)``.

        Parameters
        ----------
        n_probes : int
            Probes per sample (>= 1); the estimate is their mean.
        like : torch.Tensor
            ``(B, D)`` batch (dtype and device of the probes).
        kind : {"rademacher", "gaussian"}
            ``±1`` entries, or standard normal ones.
        generator : torch.Generator, optional
            Random source.
        """
        if kind not in PROBES:
            raise ValueError(f"unknown probe kind '{kind}'; choose one of {', '.join(PROBES)}")
        if n_probes < 1:
            raise ValueError(f"n_probes must be >= 1, got {n_probes}")
        shape = (n_probes, *like.shape)
        if kind == "gaussian":
            probes = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
        else:
            bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
            probes = (2 * bits - 1).to(like.dtype)
        return cls(probes)

    def __call__(self, velocity: Velocity, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.probes.shape[1:] != x.shape:
            raise ValueError(f"probes {tuple(self.probes.shape)} do not fit the batch {tuple(x.shape)}")
        n = self.probes.shape[0]
        if self.differentiable:
            with torch.enable_grad():
                xg = x if x.requires_grad else x.detach().requires_grad_(True)
                v = velocity(xg, t)
                total = sum((torch.autograd.grad(v, xg, probe, create_graph=True)[0] * probe).sum(-1)
                            for probe in self.probes)
            return v, total / n
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            v = velocity(xg, t.detach())
            total = x.new_zeros(x.shape[0])
            for p, probe in enumerate(self.probes):
                (vjp,) = torch.autograd.grad(v, xg, probe, retain_graph=p < n - 1)
                total = total + (vjp * probe).sum(-1)
        return v.detach(), (total / n).detach()


__all__ = ["PROBES", "Divergence", "HutchinsonDivergence", "Velocity", "exact_divergence", "rk4", "rk4_step",
           "rk4_with_divergence"]
