"""Estimates with honest error bars from a :class:`~boltzflow.samples.SampleSet`.

This is the only place where sample weights become numbers. Estimators read nothing but the
sample arrays and the ``correlated`` / ``normalized_proposal`` metadata flags, never which sampler
produced the samples. Every estimate is an :class:`Estimate` (value, standard error, effective
sample size, reliability flag, Pareto k̂ of the weights); estimates from fewer than ``min_ess``
effective samples warn with :class:`LowESSWarning` and are flagged unreliable, and so are those from
independent importance weights whose tail is too heavy (:class:`HeavyTailedWeightsWarning`, see
:mod:`.pareto`). Importing this package needs neither torch nor OpenMM.
"""

from .checks import check_samples
from .diagnostics import integrated_autocorrelation_time, move_fractions, r_hat
from .free_energy import bar, exp_average, free_energy_difference, free_energy_difference_between_states
from .importance import expectation, log_partition_function
from .pareto import pareto_k, pareto_k_threshold, psis_log_weights
from .profile import FreeEnergyProfile, free_energy_profile
from .report import format_table, summarize
from .result import Estimate, HeavyTailedWeightsWarning, LowESSWarning
from .uncertainty import (MAX_R_HAT, bootstrap_error, estimate_error, multichain_ess, split_r_hat,
                          statistical_inefficiency)
from .weights import ess, normalized_log_weights, relative_ess

__all__ = [
    "Estimate",
    "FreeEnergyProfile",
    "HeavyTailedWeightsWarning",
    "LowESSWarning",
    "MAX_R_HAT",
    "bar",
    "bootstrap_error",
    "check_samples",
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
    "move_fractions",
    "multichain_ess",
    "normalized_log_weights",
    "pareto_k",
    "pareto_k_threshold",
    "psis_log_weights",
    "r_hat",
    "relative_ess",
    "split_r_hat",
    "statistical_inefficiency",
    "summarize",
]
