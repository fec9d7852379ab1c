"""Sampler options, checked once at the entry point against each sampler's typed signature.

:func:`check_sampler_call` is what :func:`boltzflow.sample` runs before a sampler does any work:

1. an option the sampler does not have is a ``TypeError`` naming it and listing the options;
2. each value is coerced to the parameter's type hint or rejected. ``int``: whole numbers only,
   so an integral float (``1e3``, ``10.0`` — the command line's ``-o warmup=1e3`` arrives as a
   float) becomes the int ``1000``, while ``10.5``, ``True`` and ``"10"`` are errors. ``float``:
   any real number except a bool; NaN and −inf never pass, +inf only where the option's rule says
   so; the strings ``'nan'``/``'inf'`` (what ``-o step_size=nan`` delivers) are read as floats and
   judged like them. ``bool``, ``str``, paths, ``Literal[...]`` choices, ``X | None``,
   ``list[float]``/``tuple``/``Sequence`` of numbers, arrays and dicts are checked; an option that
   may be an object (``model``, ``lfep``'s ``data``) is left to the sampler, which resolves it;
3. each number must lie in the range that :data:`RULES` — one table keyed by option name, shared
   by every sampler — gives for it;
4. ``n`` samples of the system's dimension must fit in memory.

A bad value is an :class:`OptionError` (a ``ValueError``), one line naming the sampler, the
option and what it must be, e.g. ``sampler 'mala': option warmup=10.5 must be a whole number
>= 0``. The command line prints it and exits with status 2.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Union

import numpy as np

__all__ = [
    "FORWARDED_OPTIONS",
    "RULES",
    "UNCONSTRAINED",
    "CheckedCall",
    "OptionError",
    "Range",
    "available_memory",
    "check_sampler_call",
    "coerce_option",
    "option_hints",
]


class OptionError(ValueError):
    """A sampler option (or ``n``/``seed``) whose value has the wrong type or lies out of range."""


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric option: ``low``/``high`` bounds, each open or closed.

    Parameters
    ----------
    low, high : float, optional
        Bounds; ``None`` leaves that side unbounded.
    low_open, high_open : bool
        Whether the bound itself is excluded.
    allow_inf : bool
        Whether ``+inf`` is allowed (e.g. ``checkpoint_seconds=inf``: never checkpoint). NaN and
        ``-inf`` never are.

    Examples
    --------
    >>> positive = Range(0, low_open=True)
    >>> str(positive), 0.1 in positive, 0 in positive
    ('> 0', True, False)
    >>> str(Range(0, 1, high_open=True))
    'in [0, 1)'
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow_inf: bool = False

    def __contains__(self, value: float) -> bool:
        if math.isnan(value) or value == -math.inf or (value == math.inf and not self.allow_inf):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return ""


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


#: The explicit "any finite number" rule: an option listed with it was looked at and has no range.
UNCONSTRAINED = Range()

_POSITIVE = Range(0, low_open=True)
_NON_NEGATIVE = Range(0)
_AT_LEAST_1 = Range(1)
_PROBABILITY_OPEN = Range(0, 1, low_open=True, high_open=True)
_FRACTION = Range(0, 1, high_open=True)  # [0, 1)
_UNIT_UPPER = Range(0, 1, low_open=True)  # (0, 1]

#: Option name -> allowed range, shared by every sampler (a name means the same thing everywhere).
#: Every int/float parameter of every sampler must be listed (``tests/test_hostile_options.py``
#: checks it); a list of numbers is checked element by element. Cross-option conditions
#: (``k_min <= k_max``, i-SIR's ``n_proposals >= 2``) stay with the samplers.
RULES: dict[str, Range] = {
    # every sampler
    "n": _AT_LEAST_1,
    "seed": _NON_NEGATIVE,
    "checkpoint_seconds": Range(0, allow_inf=True),
    "batch_size": _AT_LEAST_1,
    # chains and their warm-up
    "n_chains": _AT_LEAST_1,
    "thin": _AT_LEAST_1,
    "warmup": _NON_NEGATIVE,
    "step_size": _POSITIVE,
    "target_acceptance": _PROBABILITY_OPEN,
    "n_leapfrog": _AT_LEAST_1,
    "jitter": _FRACTION,
    # flow MCMC (imh, isir, adaptive)
    "n_proposals": _AT_LEAST_1,
    "production_proposals": _AT_LEAST_1,
    "local_steps": _NON_NEGATIVE,
    "local_step_size": _POSITIVE,
    "local_target_acceptance": _PROBABILITY_OPEN,
    "local_warmup": _NON_NEGATIVE,
    # adaptive training
    "adapt_iterations": _NON_NEGATIVE,
    "train_every": _AT_LEAST_1,
    "train_steps": _NON_NEGATIVE,
    "lr": _POSITIVE,
    "w_kl": _NON_NEGATIVE,
    "w_reweighted": _NON_NEGATIVE,
    "reweighted_batch_size": _AT_LEAST_1,
    "reweighted_power": _UNIT_UPPER,
    "reweighted_clip": _FRACTION,
    "buffer_size": _AT_LEAST_1,
    "init_scale": _POSITIVE,
    "max_grad_norm": Range(0, low_open=True, allow_inf=True),
    # continuous flows and flow perturbation
    "chunk_size": _AT_LEAST_1,
    "ode_steps": _AT_LEAST_1,
    "n_probes": _AT_LEAST_1,
    "defensive": _FRACTION,
    "defensive_scale": _AT_LEAST_1,
    "sigma_b": _POSITIVE,
    "fd_step": _POSITIVE,
    "step_noise": _POSITIVE,
    "n_refresh": _AT_LEAST_1,
    "init_candidates": _AT_LEAST_1,
    # flow-perturbation SMC
    "n_replicas": _AT_LEAST_1,
    "n_temperatures": _AT_LEAST_1,
    "mcmc_steps": _NON_NEGATIVE,
    "beta_min": _UNIT_UPPER,
    "k_max": _AT_LEAST_1,
    "k_min": _AT_LEAST_1,
    "ess_threshold": _UNIT_UPPER,
    "gradient_steps": _NON_NEGATIVE,
    "mala_step": _POSITIVE,
    # OpenMM MD and umbrella sampling
    "timestep_fs": _POSITIVE,
    "friction_per_ps": _POSITIVE,  # zero friction is constant-energy dynamics, not a Boltzmann sampler
    "equilibration_ps": _NON_NEGATIVE,
    "metadynamics_ns": _POSITIVE,
    "bias_kj": UNCONSTRAINED,  # a bias grid, any finite heights
}

#: Samplers with ``**options`` that pass them on: function name -> the function (a name in the
#: sampler's module) whose signature those options are checked against.
FORWARDED_OPTIONS: dict[str, str] = {"sample_umbrella_md": "sample_openmm_md"}

#: Parameters that are not options.
_NOT_OPTIONS = ("system", "n", "seed")

#: Bytes held per stored number: the sampler's buffer plus the returned SampleSet.
_BYTES_PER_NUMBER = 2 * 8
#: Per-sample numbers besides the coordinates (energy, log-weight, chain, time).
_EXTRA_COLUMNS = 4

_NONFINITE_WORDS = frozenset({"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})


class _Rejected(Exception):
    """Internal: a value that does not fit a hint (turned into an OptionError by the caller)."""


class CheckedCall(NamedTuple):
    """``n``, ``seed`` and options of a sampler call, coerced and checked."""

    n: int
    seed: int
    options: dict[str, Any]


def available_memory() -> int | None:
    """Bytes of memory a run may use: psutil's available memory, else the machine's physical memory.

    Returns
    -------
    int or None
        ``None`` where neither psutil nor ``os.sysconf`` can tell.

    Examples
    --------
    >>> memory = available_memory()
    >>> memory is None or memory > 0
    True
    """
    try:
        import psutil
    except ImportError:
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    return int(psutil.virtual_memory().available)


def _describe(hint: Any, rule: Range | None) -> str:
    """What a value of ``hint`` must be, in words: ``'a whole number >= 0'``, ``'a path or None'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bound = f" {rule}" if rule is not None and str(rule) else ""
    if origin in (Union, types.UnionType):
        words = [_describe(arg, rule) for arg in args if arg is not type(None)]
        words = list(dict.fromkeys(words)) + (["None"] if type(None) in args else [])
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, Sequence):
        element = args[0] if args else Any
        return f"a list of {_describe(element, rule).removeprefix('a ')}s" if element in (int, float, str) else "a list"
    if hint is bool:
        return "True or False"
    if hint is int:
        return f"a whole number{bound}"
    if hint is float:
        return f"a finite number{bound}" if rule is None or not rule.allow_inf else f"a number{bound}"
    if hint in (str, Path):
        return "a string" if hint is str else "a path"
    if hint is np.ndarray:
        return "an array"
    name = getattr(origin or hint, "__name__", str(hint))
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _coerce(value: Any, hint: Any, rule: Range | None) -> Any:
    """``value`` as the type ``hint`` asks for, within ``rule``; raises :class:`_Rejected`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if any(_is_object(a) for a in args):
            return value  # a model or data option: the sampler's resolver checks it and says what it takes
        members = [a for a in args if a is not type(None)]
        exact = [a for a in members if isinstance(a, type) and type(value) is a]  # no int -> float surprise
        for member in exact + [m for m in members if m not in exact]:
            try:
                return _coerce(value, member, rule)
            except _Rejected:
                continue
        raise _Rejected
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _Rejected
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _Rejected
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Rejected
            return tuple(_coerce(v, a, rule) for v, a in zip(value, args))
        element = args[0] if args else Any
        coerced = [_coerce(v, element, rule) for v in value]
        return tuple(coerced) if origin is tuple else coerced
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _Rejected
    if hint is int:
        return _in_range(_whole_number(value), rule)
    if hint is float:
        return _in_range(_real_number(value), rule)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Rejected
    if hint is Path:
        if isinstance(value, (str, os.PathLike)):
            return value
        raise _Rejected
    if isinstance(origin or hint, type):  # dict[str, Any], np.ndarray, models, SampleSet...
        if isinstance(value, origin or hint):
            return value
        raise _Rejected
    return value


def _is_object(hint: Any) -> bool:
    """Whether ``hint`` is a class of objects (a model, a SampleSet) rather than a plain value type."""
    plain = (int, float, bool, str, Path, np.ndarray, dict, list, tuple, type(None))
    return isinstance(hint, type) and typing.get_origin(hint) is None and hint not in plain


def _whole_number(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise _Rejected
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise _Rejected


def _real_number(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise _Rejected
    if isinstance(value, str) and value.strip().lower() in _NONFINITE_WORDS:
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise _Rejected


def _in_range(value: float, rule: Range | None) -> Any:
    if value not in (rule or UNCONSTRAINED):
        raise _Rejected
    return value


def coerce_option(sampler: str, name: str, value: Any, hint: Any) -> Any:
    """One option's value converted to ``hint`` and checked against ``RULES[name]``.

    Parameters
    ----------
    sampler : str
        Sampler name, for the message.
    name : str
        Option name: picks the range in :data:`RULES`.
    value : Any
        What the user gave.
    hint : Any
        The parameter's resolved type hint.

    Returns
    -------
    Any
        The value to pass on (an integral float becomes an int).

    Raises
    ------
    OptionError
        If the value does not fit the hint or lies out of range.

    Examples
    --------
    >>> coerce_option("mala", "warmup", 1e3, int)
    1000
    >>> coerce_option("mala", "warmup", 10.5, int)
    Traceback (most recent call last):
    ...
    boltzflow.samplers.options.OptionError: sampler 'mala': option warmup=10.5 must be a whole number >= 0
    """
    rule = RULES.get(name)
    try:
        return _coerce(value, hint, rule)
    except _Rejected:
        what = _describe(hint, rule)
        raise OptionError(f"sampler '{sampler}': option {name}={_show(value)} must be {what}") from None


def _show(value: Any) -> str:
    """``repr(value)`` if short and on one line, else ``<TypeName>`` (a model's repr spans lines)."""
    text = repr(value)
    return text if len(text) <= 60 and "\n" not in text else f"<{type(value).__name__}>"


def _signature_options(fn: Callable[..., Any]) -> tuple[dict[str, Any], Callable[..., Any] | None]:
    """The named parameters of ``fn`` with their type hints, and the function its ``**options`` go to."""
    hints = typing.get_type_hints(fn)
    parameters = inspect.signature(fn).parameters
    named = {p: hints.get(p, Any) for p, par in parameters.items()
             if par.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    forwarded = None
    if any(par.kind is inspect.Parameter.VAR_KEYWORD for par in parameters.values()):
        forwarded = inspect.unwrap(fn).__globals__[FORWARDED_OPTIONS[fn.__name__]]
    return named, forwarded


def option_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Every parameter a sampler function accepts (its own and those it passes on) -> its type hint.

    Parameters
    ----------
    fn : callable
        A sampler function, e.g. :func:`boltzflow.samplers.sample_mala`.

    Returns
    -------
    dict
        Parameter name -> resolved type hint, ``system``, ``n`` and ``seed`` included.

    Examples
    --------
    >>> from boltzflow.samplers import sample_mala
    >>> option_hints(sample_mala)["warmup"]
    <class 'int'>
    """
    named, forwarded = _signature_options(fn)
    if forwarded is None:
        return named
    return {**named, **{p: hint for p, hint in option_hints(forwarded).items() if p not in named}}


def check_sampler_call(
    sampler: str, fn: Callable[..., Any], n: Any, seed: Any, options: Mapping[str, Any], dim: int
) -> CheckedCall:
    """Check a sampler call before any work: option names, each value's type and range, memory.

    Parameters
    ----------
    sampler : str
        Sampler name, for messages.
    fn : callable
        The sampler function that will run.
    n, seed : Any
        Number of samples and seed, as the user gave them.
    options : mapping
        The user's options.
    dim : int
        The system's dimension, for the memory check.

    Returns
    -------
    CheckedCall
        ``n``, ``seed`` and options, coerced (e.g. ``warmup=1e3`` -> ``1000``).

    Raises
    ------
    TypeError
        For an option the sampler does not have.
    OptionError
        For a value of the wrong type, out of range, or ``n`` samples that cannot fit in memory.

    Examples
    --------
    >>> from boltzflow.samplers import sample_mala
    >>> check_sampler_call("mala", sample_mala, 50, 0, {"warmup": 1e3, "thin": 2}, dim=2).options
    {'warmup': 1000, 'thin': 2}
    >>> check_sampler_call("mala", sample_mala, 50, 0, {"step_size": "nan"}, dim=2)
    Traceback (most recent call last):
    ...
    boltzflow.samplers.options.OptionError: sampler 'mala': option step_size='nan' must be a finite number > 0
    """
    hints = option_hints(fn)
    allowed = [p for p in hints if p not in _NOT_OPTIONS]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"sampler '{sampler}' has no option(s) {', '.join(unknown)}; options: {', '.join(allowed)}")
    n = coerce_option(sampler, "n", n, int)
    seed = coerce_option(sampler, "seed", seed, int)
    checked = {name: coerce_option(sampler, name, value, hints[name]) for name, value in options.items()}
    need, memory = n * (dim + _EXTRA_COLUMNS) * _BYTES_PER_NUMBER, available_memory()
    if memory is not None and need > memory:
        raise OptionError(f"sampler '{sampler}': n={n} samples of dimension {dim} need about {need / 1e9:.3g} GB, "
                          f"more than the {memory / 1e9:.3g} GB of memory available")
    return CheckedCall(n, seed, checked)
