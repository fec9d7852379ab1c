"""`Estimate`: a number with its error bar, effective sample size and a reliability flag."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any


class LowESSWarning(UserWarning):
    """Emitted when an estimate rests on too few effective samples to be trusted."""


class HeavyTailedWeightsWarning(LowESSWarning):
    """Emitted when the importance weights' tail is too heavy (Pareto k̂) for the estimate to be trusted."""


@dataclass
class Estimate:
    """An estimated quantity with its statistical error.

    Parameters
    ----------
    value : float
        The estimate (``nan`` when nothing could be estimated).
    error : float
        One standard error (``inf`` when unknown).
    ess : float, optional
        Effective number of independent samples the estimate rests on.
    n : int, optional
        Number of samples (draws) used, failed draws included.
    method : str
        How the value and error were computed, for people.
    reliable : bool
        False when the estimate must not be trusted (see ``message``).
    message : str
        Why the estimate is unreliable (or other notes).
    pareto_k : float, optional
        Pareto k̂ of the importance weights (see :mod:`boltzflow.estimate.pareto`); None for
        unweighted samples.
    """

    value: float
    error: float
    ess: float | None = None
    n: int | None = None
    method: str = ""
    reliable: bool = True
    message: str = ""
    pareto_k: float | None = None

    def __post_init__(self) -> None:
        self.value = float(self.value)
        self.error = float(self.error)
        self.ess = None if self.ess is None else float(self.ess)
        self.n = None if self.n is None else int(self.n)
        self.pareto_k = None if self.pareto_k is None else float(self.pareto_k)

    def __str__(self) -> str:
        value, error = format_value_error(self.value, self.error)
        text = f"{value} ± {error}"
        if not self.reliable:
            text += f"  UNRELIABLE: {self.message}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of plain Python types (``json.dumps`` writes nan/inf as NaN/Infinity)."""
        return asdict(self)


def format_value_error(value: float, error: float) -> tuple[str, str]:
    """Round ``value`` to the precision of ``error`` (1 significant digit, 2 if it starts with 1).

    Returns
    -------
    tuple of str
        The rounded value and error, e.g. ``("4.71", "0.08")``.
    """
    if not (math.isfinite(value) and math.isfinite(error) and error > 0):
        return f"{value:.6g}", f"{error:.2g}"
    exponent = math.floor(math.log10(error))
    digits = 2 if error / 10.0**exponent < 2 else 1
    decimals = digits - 1 - exponent
    if decimals > 10:  # tiny errors: a value below the error's last digit reads 0, not 1.3e-249
        shown = f"{value:.6g}" if round(value / 10.0**exponent, digits - 1) else "0"
        return shown, f"{error:.{digits}g}"
    if decimals < 0:
        return f"{round(value, decimals):.0f}", f"{round(error, decimals):.0f}"
    return f"{value:.{decimals}f}", f"{error:.{decimals}f}"


def mark_unreliable(
    estimate: Estimate, message: str, *, empty: bool = False, category: type[LowESSWarning] = LowESSWarning
) -> Estimate:
    """Warn with :class:`LowESSWarning` (or ``category``) and return ``estimate`` flagged unreliable.

    Parameters
    ----------
    estimate : Estimate
        The estimate to flag.
    message : str
        Why it is unreliable (shown to the user and stored in ``Estimate.message``).
    empty : bool
        True when the estimate rests on no sample at all: the error becomes ``inf``.
    category : type
        The warning class, :class:`LowESSWarning` or a subclass.
    """
    warnings.warn(message, category, stacklevel=3)
    error = math.inf if empty else estimate.error
    return replace(estimate, error=error, reliable=False, message=message)


def require_ess(estimate: Estimate, min_ess: float, what: str) -> Estimate:
    """Return ``estimate`` unchanged if its ESS reaches ``min_ess``, else flag it (and warn).

    An estimate from zero effective samples becomes ``nan ± inf``.
    """
    if estimate.ess is None or estimate.ess >= min_ess:
        return estimate
    if estimate.ess == 0:
        empty = replace(estimate, value=math.nan)
        return mark_unreliable(empty, f"{what}: no sample has nonzero weight", empty=True)
    message = (
        f"{what}: only {estimate.ess:.3g} effective samples (< min_ess={min_ess:g}); "
        "the value and its error bar cannot be trusted"
    )
    return mark_unreliable(estimate, message)
