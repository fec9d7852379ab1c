"""The metadata every sampler writes into its SampleSet, in one place."""

from __future__ import annotations

from typing import Any

from ..systems.system import System


def run_metadata(
    system: System, sampler: str, seed: int, correlated: bool, normalized_proposal: bool, **extra: Any
) -> dict[str, Any]:
    """Common SampleSet metadata: which system (name and folder), temperature, sampler, seed, flags.

    Parameters
    ----------
    system : System
        The sampled system.
    sampler : str
        Sampler name as registered in :data:`boltzflow.samplers.SAMPLERS`.
    seed : int
        Random seed of the run.
    correlated : bool
        Samples form Markov chains / trajectories (errors from autocorrelation).
    normalized_proposal : bool
        Log-weights are ``−u − log q`` with a normalised ``q`` (log Z can be estimated).
    **extra
        Sampler-specific settings and diagnostics (JSON-serialisable).
    """
    return {
        "system": system.name,
        "system_source": None if system.source is None else str(system.source),
        "temperature": system.temperature,
        "sampler": sampler,
        "seed": seed,
        "correlated": correlated,
        "normalized_proposal": normalized_proposal,
        **extra,
    }
