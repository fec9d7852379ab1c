"""Estimates with honest error bars from a :class:`~boltzflow.samples.SampleSet`.

This is the only place where sample weights become numbers. Estimators read nothing but the
sample arrays and the ``correlated`` / ``normalized_proposal`` metadata flags, never which sampler
produced the samples. Every estimate is an :class:`Estimate` (value, standard error, effective
sample size, reliability flag); estimates from fewer than ``min_ess`` effective samples warn with
:class:`LowESSWarning` and are flagged unreliable.
"""

from .diagnostics import integrated_autocorrelation_time, r_hat
from .free_energy import bar, exp_average, free_energy_difference, free_energy_difference_between_states
from .importance import expectation, log_partition_function
from .profile import FreeEnergyProfile, free_energy_profile
from .report import format_table, summarize
from .result import Estimate, LowESSWarning
from .uncertainty import bootstrap_error, estimate_error, statistical_inefficiency
from .weights import ess, normalized_log_weights, relative_ess

__all__ = [
    "Estimate",
    "FreeEnergyProfile",
    "LowESSWarning",
    "bar",
    "bootstrap_error",
    "ess",
    "estimate_error",
    "exp_average",
    "expectation",
    "format_table",
    "free_energy_difference",
    "free_energy_difference_between_states",
    "free_energy_profile",
    "integrated_autocorrelation_time",
    "log_partition_function",
    "normalized_log_weights",
    "r_hat",
    "relative_ess",
    "statistical_inefficiency",
    "summarize",
]
