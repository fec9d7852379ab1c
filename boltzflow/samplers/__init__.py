"""Samplers: each takes a System and returns a SampleSet, never an estimate.

:func:`sample` is the single entry point (``bf.sample(system, sampler="md", n=..., seed=...)``);
:data:`SAMPLERS` maps sampler names to functions ``f(system, n, seed, **options) -> SampleSet``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from ..samples import SampleSet
from ..systems.system import System
from .adaptive import sample_adaptive
from .flow import sample_flow
from .flow_mcmc import sample_imh, sample_isir
from .flow_perturbation import sample_cnf_exact, sample_cnf_hutchinson, sample_fp, sample_fp_is
from .flow_perturbation_smc import sample_fp_smc
from .hmc import sample_hmc
from .lfep import sample_lfep
from .mala import sample_mala
from .neutra import sample_neutra
from .openmm_md import sample_openmm_md
from .snf import sample_snf
from .umbrella import sample_umbrella_md


def sample_md(system: System, n: int, seed: int = 0, **options: Any) -> SampleSet:
    """The baseline for any system: OpenMM Langevin dynamics for OpenMM systems, MALA otherwise.

    Options are those of :func:`sample_openmm_md` or :func:`sample_mala`.
    """
    target = sample_openmm_md if system.openmm_system is not None else sample_mala
    _check_options("md", target, options)
    return target(system, n, seed=seed, **options)


SAMPLERS: dict[str, Callable[..., SampleSet]] = {
    "md": sample_md,
    "mala": sample_mala,
    "umbrella": sample_umbrella_md,
    "flow": sample_flow,
    "imh": sample_imh,
    "isir": sample_isir,
    "hmc": sample_hmc,
    "neutra": sample_neutra,
    "adaptive": sample_adaptive,
    "snf": sample_snf,
    "cnf-exact": sample_cnf_exact,
    "cnf-hutchinson": sample_cnf_hutchinson,
    "fp": sample_fp,
    "fp-is": sample_fp_is,
    "fp-smc": sample_fp_smc,
    "lfep": sample_lfep,
}


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
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}'; available: {', '.join(sorted(SAMPLERS))}")
    if not isinstance(system, System):
        raise TypeError(f"sample() needs a boltzflow System, got {type(system).__name__}")
    fn = SAMPLERS[sampler]
    if fn is not sample_md:
        _check_options(sampler, fn, options)
    return fn(system, n, seed=seed, **options)
