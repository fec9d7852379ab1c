"""The extended target of flow perturbation: log-weights ``log ω`` of states ``(x_T, ε)``.

:class:`ExtendedTarget` pushes extended states through a continuous flow with one of the
flow-perturbation estimators of :mod:`boltzflow.flows.continuous_perturbation` (or the biased
Hutchinson baseline on the same space) and evaluates the system's energy at the configurations:
the one weight function of the extended samplers (``fp-is``, ``fp``, ``fp-smc`` and its tamed-MALA
moves). It depends on flows and systems only, never on a sampler.
"""

from __future__ import annotations

import numpy as np
import torch

from ..systems.system import System
from .continuous import ContinuousFlow
from .continuous_perturbation import ESTIMATORS, STEP_NOISE, flow_perturbation, log_omega, noise_dim
from .distributions import DefensiveLatent

#: ODE passes (each n_steps RK4 steps) per weight of each estimator, the unit of the cost comparisons
#: (Hutchinson's one pass carries a vector-Jacobian product per RK4 stage).
ODE_PASSES = {"multistep": 2, "perturbed": 2, "stretch": 3, "hutchinson": 1}


def _check_fp_options(
    estimator: str, sigma_b: float | None, fd_step: float, ode_steps: int | None, step_noise: float
) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown flow-perturbation estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}")
    if sigma_b is not None and not sigma_b > 0:
        raise ValueError(f"sigma_b must be positive, got {sigma_b}")
    if not fd_step > 0:
        raise ValueError(f"fd_step must be positive, got {fd_step}")
    if ode_steps is not None and ode_steps < 1:
        raise ValueError(f"ode_steps must be >= 1, got {ode_steps}")
    if not step_noise > 0:
        raise ValueError(f"step_noise must be positive, got {step_noise}")



class ExtendedTarget:
    """Flow-perturbation log-weights of extended states ``(x_T, ε)`` (numpy in, numpy out, in batches).

    Parameters
    ----------
    system : System
        Target (its energy gives ``u(x0)``).
    flow : ContinuousFlow
        The flow.
    estimator : {"multistep", "perturbed", "stretch", "hutchinson"}
        Flow-perturbation estimator, or ``"hutchinson"``: the biased baseline on the same extended
        space (``ε`` as its probe), for side-by-side comparisons.
    sigma_b : float, optional
        σ_B of ``"perturbed"`` (default: the flow's).
    fd_step : float
        Central-difference step of ``"stretch"``.
    ode_steps : int, optional
        RK4 steps (default: the flow's); for ``"multistep"`` also its noisy steps ``N``.
    batch_size : int
        States pushed through the flow at once.
    step_noise : float
        ``σ₀`` of ``"multistep"`` (standardised units; ``σ₀ √h`` per step).
    latent : DefensiveLatent, optional
        The density ``x_T`` is drawn from, in ``log ω`` (default: the flow's standard normal; only
        independent draws — ``fp-is`` — may use another: the moves of ``fp``/``fp-smc`` preserve
        the standard normal).
    """

    def __init__(
        self, system: System, flow: ContinuousFlow, estimator: str = "multistep", sigma_b: float | None = None,
        fd_step: float = 1e-3, ode_steps: int | None = None, batch_size: int = 1024, step_noise: float = STEP_NOISE,
        latent: DefensiveLatent | None = None,
    ) -> None:
        _check_fp_options(estimator, sigma_b, fd_step, ode_steps, step_noise)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.system, self.flow = system, flow
        self.estimator, self.sigma_b, self.fd_step, self.ode_steps = estimator, sigma_b, fd_step, ode_steps
        self.step_noise = step_noise
        self.latent = latent or DefensiveLatent()
        self.batch_size = batch_size
        self.device = flow.loc.device
        self.n_evaluations = 0

    @property
    def dim(self) -> int:
        """``d``, the dimension of ``x_T``."""
        return self.flow.latent_dim

    @property
    def noise_dim(self) -> int:
        """The dimension of ``ε``: ``N·d`` for ``"multistep"`` (``N`` RK4 steps), ``d`` otherwise."""
        return noise_dim(self.flow, self.estimator, self.ode_steps)

    def evaluate(self, z: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Configurations ``x (B, D)``, energies ``u (B,)`` and ``log ω (B,)`` of states ``(z, eps)``."""
        x, energies, delta_s, log_pz = self._terms(z, eps)
        return x, energies, log_omega(energies, delta_s, log_pz)

    def evaluate_proposal(self, z: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Configurations, energies and ``log p_Z(x_T) − ΔS`` (``log ω = −u −`` that; NaN where not finite)."""
        x, energies, delta_s, log_pz = self._terms(z, eps)
        with np.errstate(invalid="ignore", over="ignore"):
            log_proposal = log_pz - delta_s
        return x, energies, np.where(np.isfinite(log_proposal), log_proposal, np.nan)

    def _terms(self, z: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``x``, ``u(x)``, ``ΔS`` and ``log p_Z(x_T)``, the flow in batches of ``batch_size``."""
        n = z.shape[0]
        x = np.empty((n, self.system.dim))
        delta_s = np.empty(n)
        log_pz = np.empty(n)
        for start in range(0, n, self.batch_size):
            rows = slice(start, start + self.batch_size)
            zt = torch.as_tensor(z[rows], dtype=torch.float64, device=self.device)
            et = torch.as_tensor(eps[rows], dtype=torch.float64, device=self.device)
            y0, ds = flow_perturbation(self.flow, zt, et, self.estimator, self.sigma_b, self.fd_step, self.ode_steps,
                                       step_noise=self.step_noise)
            with torch.no_grad():
                xb, chart_log_det = self.flow.to_configuration_with_log_det(y0)  # −inf off the chart's domain
                x[rows] = xb.cpu().numpy()
                log_pz[rows] = self.latent.log_prob(zt).cpu().numpy()
            delta_s[rows] = (ds + chart_log_det).cpu().numpy()
        energies = self.system.energy.evaluate(x, need_gradient=False).energy
        self.n_evaluations += n
        return x, energies, delta_s, log_pz



__all__ = ["ODE_PASSES", "ExtendedTarget"]
