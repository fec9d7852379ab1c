"""Samplers: each takes a System and returns a SampleSet, never an estimate.

:func:`sample` is the single entry point (``bf.sample(system, sampler="md", n=..., seed=...)``);
:data:`SAMPLERS` maps sampler names to functions ``f(system, n, seed, **options) -> SampleSet``.
The sampler modules (torch, OpenMM) are imported when a sampler is first looked up, so listing the
names (``sorted(SAMPLERS)``, e.g. for the command line) imports none of them.
"""

from __future__ import annotations

import importlib
import inspect
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
    "sample_cnf_exact": "flow_perturbation",
    "sample_cnf_hutchinson": "flow_perturbation",
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

    Options are those of :func:`sample_openmm_md` or :func:`sample_mala`.
    """
    if system.openmm_system is None:
        from .mala import sample_mala as target
    else:
        from .openmm_md import sample_openmm_md as target
    _check_options("md", target, options)
    return target(system, n, seed=seed, **options)


def _check_options(name: str, fn: Callable, options: dict[str, Any]) -> None:
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # options pass through to an inner sampler, which checks them
    allowed = [p for p in parameters if p not in ("system", "n", "seed")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"sampler '{name}' has no option(s) {', '.join(unknown)}; options: {', '.join(allowed)}")


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
    """
    from ..systems.system import System

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}'; available: {', '.join(sorted(SAMPLERS))}")
    if not isinstance(system, System):
        raise TypeError(f"sample() needs a boltzflow System, got {type(system).__name__}")
    fn = SAMPLERS[sampler]
    if fn is not sample_md:
        _check_options(sampler, fn, options)
    return fn(system, n, seed=seed, **options)
