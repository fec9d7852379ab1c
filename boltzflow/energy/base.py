"""The one energy interface every backend implements.

An :class:`Energy` maps a batch of configurations ``(B, D)`` to *reduced* energies ``u = U / kT``
(dimensionless) and their gradients. Backends (numba kernels, the OpenMM bridge, user functions)
only implement :meth:`Energy._evaluate` on float64 numpy arrays of finite configurations; this base
class owns everything that must be identical across backends:

* shape checks (``(B, D)``, ``(D,)``, or ``(B, *event_shape)`` such as ``(B, n_atoms, 3)``),
* failure handling: rows with NaN/inf coordinates are never passed to the backend, and any row whose
  energy comes back non-finite gets ``u = +inf`` and a zero gradient (zero Boltzmann weight);
  failures are counted, never raised, never replaced by 0 or a stale value,
* a torch entry point (:meth:`Energy.__call__`) that is differentiable through the backend's forces
  by a custom autograd function (no finite differences),
* algebra: ``energy_a + energy_b`` and ``factor * energy``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch


class EnergyShapeError(ValueError):
    """Raised when a batch does not have the shape an energy expects."""


@dataclass
class EnergyResult:
    """Reduced energies and gradients of one batch.

    Attributes
    ----------
    energy : np.ndarray
        ``(B,)`` reduced energies in kT; ``+inf`` for failed rows.
    gradient : np.ndarray or None
        ``(B, D)`` gradient ``du/dx`` (``-F/kT``); zero rows where the energy failed.
        ``None`` when the gradient was not requested.
    n_failed : int
        Number of rows that failed (non-finite input or non-finite / raising evaluation).
    """

    energy: np.ndarray
    gradient: np.ndarray | None
    n_failed: int


class Energy(ABC):
    """Reduced energy ``u(x) = U(x) / kT`` of a batch of configurations.

    Parameters
    ----------
    dim : int
        Number of degrees of freedom ``D`` (``3 * n_atoms`` for molecules).
    event_shape : tuple of int, optional
        Natural shape of one configuration, e.g. ``(n_atoms, 3)``; batches of that shape are
        accepted and flattened. Defaults to ``(dim,)``.

    Attributes
    ----------
    n_evaluated, n_failed : int
        Running counts of rows evaluated and rows that failed, over the object's lifetime.
    """

    def __init__(self, dim: int, event_shape: tuple[int, ...] | None = None) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.event_shape = tuple(event_shape) if event_shape is not None else (self.dim,)
        if math.prod(self.event_shape) != self.dim:
            raise ValueError(f"event_shape {self.event_shape} does not hold dim={self.dim} values")
        self.n_evaluated = 0
        self.n_failed = 0

    # ------------------------------------------------------------------ backend hook
    @abstractmethod
    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Evaluate finite configurations.

        Parameters
        ----------
        x : np.ndarray
            ``(B, D)`` float64, C-contiguous, all entries finite.
        need_gradient : bool
            Whether the gradient must be returned.

        Returns
        -------
        energy : np.ndarray
            ``(B,)`` reduced energies (may contain non-finite values; the caller handles them).
        gradient : np.ndarray or None
            ``(B, D)`` ``du/dx`` when requested.
        """

    # ------------------------------------------------------------------ numpy entry point
    def flatten_batch(self, x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        """Bring a batch to ``(B, D)`` float64 and return it with the batch shape.

        Accepts ``(D,)``, ``(B, D)``, ``(*event_shape)`` and ``(B, *event_shape)``.
        """
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
            raise EnergyShapeError(f"configurations must be real numbers, got dtype {x.dtype}")
        shape = x.shape
        if shape == (self.dim,) or shape == self.event_shape:
            batch_shape: tuple[int, ...] = ()
        elif len(shape) == 2 and shape[1] == self.dim:
            batch_shape = shape[:1]
        elif len(shape) == len(self.event_shape) + 1 and shape[1:] == self.event_shape:
            batch_shape = shape[:1]
        else:
            raise EnergyShapeError(
                f"expected a batch of shape (B, {self.dim})"
                + (f" or (B, {', '.join(map(str, self.event_shape))})" if len(self.event_shape) > 1 else "")
                + f", got {tuple(shape)}"
            )
        flat = np.ascontiguousarray(x.reshape(-1, self.dim), dtype=np.float64)
        return flat, batch_shape

    def evaluate(self, x: np.ndarray | torch.Tensor, need_gradient: bool = True) -> EnergyResult:
        """Reduced energies (and gradients) of a batch, with failures as ``+inf``.

        Parameters
        ----------
        x : array-like
            ``(B, D)`` or ``(B, *event_shape)`` configurations (a single configuration is a batch
            of one).
        need_gradient : bool
            Also return ``du/dx``.

        Returns
        -------
        EnergyResult
        """
        flat, _ = self.flatten_batch(x)
        n = flat.shape[0]
        ok = np.isfinite(flat).all(axis=1)
        rows = flat if ok.all() else np.ascontiguousarray(flat[ok])
        if rows.shape[0]:
            u, g = self._evaluate(rows, need_gradient)
            u = np.asarray(u, dtype=np.float64).reshape(-1)
            if u.shape[0] != rows.shape[0]:
                raise RuntimeError(f"{type(self).__name__} returned {u.shape[0]} energies for {rows.shape[0]} rows")
            good = np.isfinite(u)
            if need_gradient:
                g = np.asarray(g, dtype=np.float64).reshape(rows.shape)
                good &= np.isfinite(g.sum(axis=1))
        else:
            u, g, good = np.empty(0), np.empty((0, self.dim)), np.empty(0, dtype=bool)
        if rows is flat and good.all():
            # Fast path (the common case): no failed rows, no copies.
            energy, gradient = u, g if need_gradient else None
        else:
            energy = np.full(n, np.inf)
            gradient = np.zeros_like(flat) if need_gradient else None
            idx = np.flatnonzero(ok)[good]
            energy[idx] = u[good]
            if need_gradient:
                gradient[idx] = g[good]
        n_failed = int(np.count_nonzero(~np.isfinite(energy)))
        self.n_evaluated += n
        self.n_failed += n_failed
        return EnergyResult(energy=energy, gradient=gradient, n_failed=n_failed)

    # ------------------------------------------------------------------ torch entry point
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable reduced energy of a torch batch.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, D)``, ``(B, *event_shape)`` or a single configuration.

        Returns
        -------
        torch.Tensor
            ``(B,)`` (or a scalar for a single configuration), same dtype/device as ``x``;
            ``+inf`` for failed rows, whose gradient is zero.
        """
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=torch.float64)
        _, batch_shape = self.flatten_batch(x.detach())
        u = _EnergyFunction.apply(x, self)
        return u.reshape(batch_shape)

    # ------------------------------------------------------------------ algebra
    def __add__(self, other: "Energy") -> "Energy":
        if not isinstance(other, Energy):
            return NotImplemented
        return SumEnergy([self, other])

    def __mul__(self, factor: float) -> "Energy":
        if not isinstance(factor, (int, float)):
            return NotImplemented
        return ScaledEnergy(self, float(factor))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class _EnergyFunction(torch.autograd.Function):
    """Autograd bridge: forward calls the backend, backward uses its gradient (forces)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, energy: Energy) -> torch.Tensor:  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0]
        result = energy.evaluate(x.detach(), need_gradient=need_grad)
        if need_grad:
            ctx.save_for_backward(torch.as_tensor(result.gradient, dtype=x.dtype, device=x.device).reshape(x.shape))
        return torch.as_tensor(result.energy, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (gradient,) = ctx.saved_tensors
        n = grad_output.numel()
        grad_x = gradient.reshape(n, -1) * grad_output.reshape(n, 1)
        return grad_x.reshape(gradient.shape), None


class SumEnergy(Energy):
    """Sum of energies on the same configuration space, e.g. target + restraint."""

    def __init__(self, terms: list[Energy]) -> None:
        flat: list[Energy] = []
        for term in terms:
            flat.extend(term.terms if isinstance(term, SumEnergy) else [term])
        dims = {t.dim for t in flat}
        if len(dims) != 1:
            raise EnergyShapeError(f"cannot add energies of different dimensions {sorted(dims)}")
        super().__init__(flat[0].dim, flat[0].event_shape)
        self.terms = flat

    def _evaluate(self, x, need_gradient):
        total = np.zeros(x.shape[0])
        grad = np.zeros_like(x) if need_gradient else None
        for term in self.terms:
            r = term.evaluate(x, need_gradient)
            total += r.energy
            if need_gradient:
                grad += r.gradient
        return total, grad

    def __repr__(self) -> str:
        return " + ".join(map(repr, self.terms))


class ScaledEnergy(Energy):
    """``factor * energy``; e.g. ``(T_old / T_new) * u`` moves a reduced energy to a new temperature."""

    def __init__(self, energy: Energy, factor: float) -> None:
        if not math.isfinite(factor):
            raise ValueError(f"scale factor must be finite, got {factor}")
        super().__init__(energy.dim, energy.event_shape)
        self.energy = energy
        self.factor = factor

    def _evaluate(self, x, need_gradient):
        r = self.energy.evaluate(x, need_gradient)
        return self.factor * r.energy, (self.factor * r.gradient if need_gradient else None)

    def __repr__(self) -> str:
        return f"{self.factor:g} * {self.energy!r}"
