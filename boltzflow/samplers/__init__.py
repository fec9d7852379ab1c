"""Samplers: each takes a System and returns a SampleSet, never an estimate.

:func:`sample` is the single entry point (``bf.sample(system, sampler="md", n=..., seed=...)``);
:data:`SAMPLERS` maps sampler names to functions ``f(system, n, seed, **options) -> SampleSet``.
The sampler modules (torch, OpenMM) are imported when a sampler is first looked up, so listing the
names (``sorted(SAMPLERS)``, e.g. for the command line) imports none of them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..samples import SampleSet
    from ..systems.system import System

#: The module of each sampler function, imported on first access of ``boltzflow.samplers.<function>``.
_FUNCTION_MODULES: dict[str, str] = {
    "sample_adaptive": "adaptive",
    "sample_flow": "flow",
    "sample_imh": "flow_mcmc",
    "sample_isir": "flow_mcmc",
    "sample_cnf_exact": "cnf",
    "sample_cnf_hutchinson": "cnf",
    "sample_fp": "flow_perturbation",
    "sample_fp_is": "flow_perturbation",
    "sample_fp_smc": "flow_perturbation_smc",
    "sample_hmc": "hmc",
    "sample_lfep": "lfep",
    "sample_mala": "mala",
    "sample_neutra": "neutra",
    "sample_openmm_md": "openmm_md",
    "sample_snf": "snf",
    "sample_umbrella_md": "umbrella",
}

#: Sampler name -> the function of this package that implements it.
_SAMPLER_FUNCTIONS: dict[str, str] = {
    "md": "sample_md",
    "mala": "sample_mala",
    "umbrella": "sample_umbrella_md",
    "flow": "sample_flow",
    "imh": "sample_imh",
    "isir": "sample_isir",
    "hmc": "sample_hmc",
    "neutra": "sample_neutra",
    "adaptive": "sample_adaptive",
    "snf": "sample_snf",
    "cnf-exact": "sample_cnf_exact",
    "cnf-hutchinson": "sample_cnf_hutchinson",
    "fp": "sample_fp",
    "fp-is": "sample_fp_is",
    "fp-smc": "sample_fp_smc",
    "lfep": "sample_lfep",
}


def __getattr__(name: str) -> Any:
    """Import a sampler function on first access (PEP 562)."""
    if name not in _FUNCTION_MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_FUNCTION_MODULES[name]}", __name__), name)
    globals()[name] = value
    return value


class _SamplerRegistry(Mapping[str, Callable[..., "SampleSet"]]):
    """Sampler names -> functions; a function's module is imported when it is first looked up."""

    def __getitem__(self, name: str) -> Callable[..., SampleSet]:
        return getattr(sys.modules[__name__], _SAMPLER_FUNCTIONS[name])

    def __iter__(self) -> Iterator[str]:
        return iter(_SAMPLER_FUNCTIONS)

    def __len__(self) -> int:
        return len(_SAMPLER_FUNCTIONS)

    def __repr__(self) -> str:
        return f"SAMPLERS({', '.join(_SAMPLER_FUNCTIONS)})"


SAMPLERS: Mapping[str, Callable[..., SampleSet]] = _SamplerRegistry()


def sample_md(system: System, n: int, seed: int = 0, **options: Any) -> SampleSet:
    """The baseline for any system: OpenMM Langevin dynamics for OpenMM systems, MALA otherwise.

    Options are those of :func:`sample_openmm_md` or :func:`sample_mala`, checked as in :func:`sample`.

    Examples
    --------
    >>> import boltzflow as bf
    >>> system = bf.load_system("double_well_2d")  # not an OpenMM system: MALA
    >>> sample_md(system, 20, warmup=100, thin=1e0, progress=False).metadata["sampler"]
    'mala'
    """
    from .options import check_sampler_call

    if system.openmm_system is None:
        from .mala import sample_mala as target
    else:
        from .openmm_md import sample_openmm_md as target
    call = check_sampler_call("md", target, n, seed, options, system.dim)
    return target(system, call.n, seed=call.seed, **call.options)


def sample(system: System, sampler: str = "md", n: int = 1000, seed: int = 0, **options: Any) -> SampleSet:
    """Draw samples of ``system`` with the named sampler.

    Parameters
    ----------
    system : System
        Target (see :func:`boltzflow.load_system`).
    sampler : str
        One of :data:`SAMPLERS`.
    n : int
        Number of samples.
    seed : int
        Random seed.
    **options
        Sampler options, e.g. ``thin=500`` or ``progress=False``.

    Returns
    -------
    SampleSet

    Raises
    ------
    TypeError
        For an option the sampler does not have.
    ValueError
        For an unknown sampler; :class:`~boltzflow.samplers.options.OptionError` (a ValueError)
        for an option, ``n`` or ``seed`` of the wrong type or out of range (see
        :mod:`boltzflow.samplers.options`: an integral float such as ``1e3`` is accepted as the
        int ``1000``), or ``n`` samples that cannot fit in memory. All are raised before any work.

    Examples
    --------
    >>> import boltzflow as bf
    >>> system = bf.load_system("double_well_2d")
    >>> bf.sample(system, "mala", n=20, warmup=1e2, thin=1, progress=False).x.shape
    (20, 2)
    >>> bf.sample(system, "mala", n=20, warmup=10.5)
    Traceback (most recent call last):
    ...
    boltzflow.samplers.options.OptionError: sampler 'mala': option warmup=10.5 must be a whole number >= 0
    """
    from ..systems.system import System

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}'; available: {', '.join(sorted(SAMPLERS))}")
    if not isinstance(system, System):
        raise TypeError(f"sample() needs a boltzflow System, got {type(system).__name__}")
    fn = SAMPLERS[sampler]
    if fn is sample_md:
        return sample_md(system, n, seed=seed, **options)  # checks against the sampler it picks
    from .options import check_sampler_call

    call = check_sampler_call(sampler, fn, n, seed, options, system.dim)
    return fn(system, call.n, seed=call.seed, **call.options)
