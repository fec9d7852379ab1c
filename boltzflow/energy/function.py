"""User energies: a plain Python function becomes an :class:`~boltzflow.energy.base.Energy`."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch

from .base import Energy


class EnergyFunctionError(RuntimeError):
    """A user energy function raised on every row of a batch before it had ever succeeded."""


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

    Notes
    -----
    Rows on which ``fn`` (or ``gradient``, or autograd) raises an ``Exception`` are failed rows:
    a batch that raises is split in halves until the raising rows are isolated, and only those
    get ``u = +inf`` (counted in ``n_failed``, with one warning per object quoting the first
    exception); the other rows keep their values. Two cases stay errors, because they are
    mistakes in the function rather than bad configurations: a batch on which *every* row raises
    before the function has ever succeeded on a row (:class:`EnergyFunctionError`, chained to the
    first row's exception), and a result of the wrong type or shape (``TypeError`` /
    ``ValueError``). ``KeyboardInterrupt`` always propagates.

    Examples
    --------
    >>> import numpy as np
    >>> def u(x):
    ...     if (x[:, 0] > 1).any():
    ...         raise ValueError("outside the domain")
    ...     return 0.5 * (x ** 2).sum(-1)
    >>> energy = FunctionEnergy(u, dim=2, gradient=lambda x: x)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     result = energy.evaluate(np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]]))
    >>> result.energy.tolist(), result.n_failed
    ([0.5, inf, 1.0], 1)
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
        self._has_succeeded = False  # some row has been evaluated without raising
        self._warned = False

    @property
    def function_name(self) -> str:
        """The user function's name, for messages."""
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        n = x.shape[0]
        u = np.full(n, np.inf)
        g = np.zeros_like(x) if need_gradient else None
        errors: list[Exception] = []
        self._fill(x, 0, n, need_gradient, u, g, errors)
        if not errors:
            self._has_succeeded = True
            return u, g
        if len(errors) == n and not self._has_succeeded:
            first = errors[0]
            raise EnergyFunctionError(
                f"energy function {self.function_name} raised on every one of the {n} rows of a batch "
                f"(first: {type(first).__name__}: {first})"
            ) from first
        self._has_succeeded = self._has_succeeded or len(errors) < n
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"energy function {self.function_name} raised on {len(errors)} of {n} rows "
                f"(first: {type(errors[0]).__name__}: {errors[0]}); those rows get u = +inf and count as failed",
                RuntimeWarning,
                stacklevel=3,
            )
        return u, g

    def _fill(
        self,
        x: np.ndarray,
        lo: int,
        hi: int,
        need_gradient: bool,
        u: np.ndarray,
        g: np.ndarray | None,
        errors: list[Exception],
    ) -> None:
        """Evaluate rows ``lo:hi`` into ``u``/``g``, bisecting around rows on which the function raises."""
        rows = x[lo:hi]
        try:
            raw_u, raw_g = self._call(rows, need_gradient)
        except Exception as err:
            if hi - lo == 1:
                errors.append(err)
                return
            mid = (lo + hi) // 2
            self._fill(x, lo, mid, need_gradient, u, g, errors)
            self._fill(x, mid, hi, need_gradient, u, g, errors)
            return
        u[lo:hi], gradient = self._checked(raw_u, raw_g, rows)
        if need_gradient:
            g[lo:hi] = gradient

    def _call(self, x: np.ndarray, need_gradient: bool) -> tuple[Any, Any]:
        """The user's energy and gradient of ``x``, unchecked; whatever the user's code raises propagates."""
        if self.gradient_fn is not None:
            return self.fn(x), (self.gradient_fn(x) if need_gradient else None)
        xt = torch.from_numpy(x).requires_grad_(need_gradient)
        with torch.enable_grad():
            out = self.fn(xt)
            if not isinstance(out, torch.Tensor) or not need_gradient or out.numel() != x.shape[0]:
                return out, None  # _checked reports a wrong type or shape
            if not out.requires_grad:  # a constant energy
                return out, torch.zeros_like(xt)
            (g,) = torch.autograd.grad(out.sum(), xt, allow_unused=True)
        return out, torch.zeros_like(xt) if g is None else g

    def _checked(self, raw_u: Any, raw_g: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Reduced energy and gradient arrays from the user's outputs, with clear errors for a wrong type or shape."""
        if self.gradient_fn is None:
            if not isinstance(raw_u, torch.Tensor):
                raise TypeError(
                    f"energy function {self.function_name} returned a {type(raw_u).__name__}, not a tensor; "
                    "pass gradient=... for numpy energies"
                )
            raw_u = raw_u.detach().to(torch.float64).numpy()
            raw_g = None if raw_g is None else raw_g.detach().numpy()
        u = np.asarray(raw_u, dtype=np.float64).reshape(-1)
        if u.shape[0] != x.shape[0]:
            raise ValueError(
                f"energy function {self.function_name} returned {u.shape[0]} values for a batch of {x.shape[0]}"
            )
        if raw_g is None:
            return u / self.kT, None
        g = np.asarray(raw_g, dtype=np.float64)
        if g.size != x.size:
            raise ValueError(
                f"gradient of {self.function_name} has shape {g.shape} for a batch of shape {x.shape}"
            )
        return u / self.kT, g.reshape(x.shape) / self.kT
