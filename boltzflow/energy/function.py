"""User energies: a plain Python function becomes an :class:`~boltzflow.energy.base.Energy`."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .base import Energy


class FunctionEnergy(Energy):
    """Wrap a user function ``fn(x) -> U`` as a reduced energy ``u = U / kT``.

    Two kinds of functions are accepted:

    * a **torch** function ``fn: (B, D) tensor -> (B,) tensor`` (the default): it is called in
      float64 and its gradient comes from torch autograd;
    * a **numpy** function, when ``gradient`` is given: ``fn: (B, D) ndarray -> (B,)`` and
      ``gradient: (B, D) ndarray -> (B, D)`` returning ``dU/dx``.

    Parameters
    ----------
    fn : callable
        Energy in the user's units; divided by ``kT``.
    dim : int
        Number of degrees of freedom.
    kT : float
        Thermal energy in the units of ``fn`` (1 when ``fn`` already returns reduced energies).
    gradient : callable, optional
        ``dU/dx`` for numpy functions.
    event_shape : tuple of int, optional
        Natural shape of one configuration.
    """

    def __init__(
        self,
        fn: Callable,
        dim: int,
        kT: float = 1.0,
        gradient: Callable | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(dim, event_shape)
        if not callable(fn):
            raise TypeError(f"energy function must be callable, got {type(fn).__name__}")
        if not kT > 0:
            raise ValueError(f"kT must be positive, got {kT}")
        self.fn = fn
        self.kT = float(kT)
        self.gradient_fn = gradient

    def _evaluate(self, x: np.ndarray, need_gradient: bool):
        if self.gradient_fn is not None:
            u = np.asarray(self.fn(x), dtype=np.float64).reshape(-1) / self.kT
            g = np.asarray(self.gradient_fn(x), dtype=np.float64).reshape(x.shape) / self.kT if need_gradient else None
            return u, g
        xt = torch.from_numpy(x).requires_grad_(need_gradient)
        with torch.enable_grad():
            out = self.fn(xt)
            if not isinstance(out, torch.Tensor):
                raise TypeError(
                    "energy function returned a non-tensor; pass gradient=... for numpy energies"
                )
            out = out.reshape(-1).to(torch.float64)
            if out.shape[0] != x.shape[0]:
                raise ValueError(f"energy function returned {out.shape[0]} values for a batch of {x.shape[0]}")
            if not need_gradient:
                return out.detach().numpy() / self.kT, None
            (g,) = torch.autograd.grad(out.sum(), xt, allow_unused=True)
        g = np.zeros_like(x) if g is None else g.numpy()
        return out.detach().numpy() / self.kT, g / self.kT
