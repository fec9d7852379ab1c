"""Training a flow toward a Boltzmann distribution: maximum likelihood, reverse KL, or a mix.

Losses (all means over a batch, reduced units):

* maximum likelihood on data ``x_i`` (drawn with probability proportional to their importance
  weights, so umbrella/reweighted data is used correctly): ``ML = −mean log q(x_i)``;
* reverse KL on flow samples ``x = f(z)`` (reparameterised): ``KL = mean[u'(x) + log q(x)]``,
  with gradients through ``system.energy`` (its forces) and the flow;
* ``loss = w_ml · ML + w_kl · KL``.

Safeguards, for the *loss only* (energies used for weights are never altered): the energy is
clamped at ``u_max`` and cut smoothly above ``u_high`` (:func:`cut_energy`); flow samples whose
energy or density is not finite are dropped from the KL term and counted; the gradient norm is
clipped; a step whose gradients are still not finite is skipped and counted.

Reverse-KL rollback: reverse-KL steps can leave a good flow much worse (a large step on a batch
with heavy weights, and the flow does not recover in the remaining steps; which run does so depends
on floating-point details, hence on the CPU). When the KL term is on and no validation set is
given, the relative ESS of a fixed probe batch of flow draws is measured before training, every
``ess_every`` steps and at the end; if the final ESS is below the best one divided by
``rollback_factor``, the flow is returned with the parameters of the best probe. A well that the
flow is dropping shows up while a few probe draws still land in it (with huge weights); a mode the
flow has lost entirely does not: against that, keep an ML term (``w_ml > 0``) or give a validation set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..integrity import differences, error_summary, read_torch, write_torch
from ..io import InterruptGuard
from ..samples import SampleSet
from ..systems.system import System
from .distributions import FlowDistribution


class TrainingCheckpointError(ValueError):
    """Raised for a corrupted training checkpoint or one written by a different run."""


@dataclass
class TrainingHistory:
    """Per-iteration record of a training run.

    Attributes
    ----------
    loss, ml, kl : list of float
        Total loss and its two terms (``nan`` for a term with zero weight).
    relative_ess : list of float
        Relative Kish ESS of the latest batch of flow samples (``nan`` before the first one).
    n_dropped : int
        Flow samples dropped from the KL term because their energy or density was not finite.
    n_skipped : int
        Optimiser steps skipped because the gradients were not finite (or there was no loss
        to differentiate: every KL sample failed).
    validation_iteration, validation_ml : list
        Iterations at which the held-out negative log-likelihood was measured, and its values.
    best_iteration : int or None
        Iteration count of the parameters kept: the lowest held-out NLL when validating, or the
        best probe ESS after a reverse-KL rollback.
    probe_iteration, probe_ess : list
        Iteration counts at which the reverse-KL probe batch was drawn (0: before training), and
        its relative ESS.
    rolled_back : bool
        Whether the reverse-KL rollback restored the parameters of the best probe.
    seconds : float
        Wall-clock time spent in training steps, summed over resumed sessions.
    """

    loss: list[float] = field(default_factory=list)
    ml: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    relative_ess: list[float] = field(default_factory=list)
    n_dropped: int = 0
    n_skipped: int = 0
    validation_iteration: list[int] = field(default_factory=list)
    validation_ml: list[float] = field(default_factory=list)
    best_iteration: int | None = None
    probe_iteration: list[int] = field(default_factory=list)
    probe_ess: list[float] = field(default_factory=list)
    rolled_back: bool = False
    seconds: float = 0.0


def cut_energy(u: torch.Tensor, u_high: float = 1e3, u_max: float = 1e9) -> torch.Tensor:
    """Energy transform for training losses: identity up to ``u_high``, logarithmic above.

    ``u' = u`` for ``u <= u_high``; ``u' = u_high + log(1 + min(u, u_max) − u_high)`` above: continuous
    with a continuous first derivative at ``u_high``, monotone, and bounded (flat beyond ``u_max``).
    Never apply it to energies used for importance weights.

    Parameters
    ----------
    u : torch.Tensor
        Reduced energies (``+inf`` maps to the bound).
    u_high, u_max : float
        Start of the logarithmic regime and the clamp (``u_max > u_high``).

    Returns
    -------
    torch.Tensor
    """
    if not u_max > u_high:
        raise ValueError(f"u_max ({u_max}) must exceed u_high ({u_high})")
    excess = (torch.clamp(u, max=u_max) - u_high).clamp_min(0.0)
    return torch.where(u > u_high, u_high + torch.log1p(excess), u)


def ml_loss(flow: FlowDistribution, x: torch.Tensor) -> torch.Tensor:
    """Negative mean log-likelihood ``−mean log q(x)`` of data ``x (B, D)``."""
    return -flow.log_prob(x).mean()


def kl_loss(
    system: System, flow: FlowDistribution, n: int, generator: torch.Generator | None = None,
    u_high: float = 1e3, u_max: float = 1e9,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reverse KL ``mean[u'(x) + log q(x)]`` over ``n`` reparameterised flow samples.

    Parameters
    ----------
    system : System
        Target; ``system.energy`` is differentiable through its forces.
    flow : FlowDistribution
        The flow being trained.
    n : int
        Batch size.
    generator : torch.Generator, optional
        Random source of the latent samples.
    u_high, u_max : float
        Loss-only energy cut (:func:`cut_energy`).

    Returns
    -------
    loss : torch.Tensor
        Scalar; a constant zero (no graph) when every sample failed.
    log_weights : torch.Tensor
        ``(n,)`` detached ``−u − log q`` with the true energies (``−inf`` for failures).
    n_dropped : int
        Samples with non-finite energy or density left out of the loss.
    """
    x, log_q = flow.sample(n, generator)
    u = system.energy(x.to(torch.float64)).to(log_q)
    ok = torch.isfinite(u) & torch.isfinite(log_q)
    log_w = torch.where(ok, -u - log_q, torch.tensor(-math.inf, dtype=log_q.dtype)).detach()
    n_ok = int(ok.sum())
    if n_ok == 0:
        return log_q.new_zeros(()), log_w, n
    loss = (cut_energy(u[ok], u_high, u_max) + log_q[ok]).mean()
    return loss, log_w, n - n_ok


def relative_ess(log_weights: torch.Tensor) -> float:
    """Kish effective sample size divided by the batch size, of torch log-weights (a training diagnostic).

    The torch twin of :func:`boltzflow.estimate.relative_ess`, used by every training loop in
    :mod:`boltzflow.flows`; the estimates themselves come from :mod:`boltzflow.estimate`.

    Parameters
    ----------
    log_weights : torch.Tensor
        ``(N,)`` log-weights; NaN and ``-inf`` mean zero weight.

    Returns
    -------
    float
        ``(sum w)^2 / sum w^2 / N`` in float64; ``0.0`` when every weight is zero.
    """
    lw = log_weights.detach().to(torch.float64)
    lw = torch.where(torch.isnan(lw), -math.inf, lw)
    if not torch.isfinite(lw).any():
        return 0.0
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / lw.numel())


DATA_WEIGHTINGS = ("importance", "uniform")


def _data_sampler(data: SampleSet, dim: int, device: str, weighting: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite-weight data rows and their sampling probabilities (normalised importance weights, or uniform)."""
    if weighting not in DATA_WEIGHTINGS:
        raise ValueError(f"unknown data weighting '{weighting}'; choose one of {', '.join(DATA_WEIGHTINGS)}")
    if data.dim != dim:
        raise ValueError(f"training data has dimension {data.dim}, the system {dim}")
    keep = np.isfinite(data.log_weights)
    if not keep.any():
        raise ValueError("training data has no sample with nonzero weight")
    lw = data.log_weights[keep] if weighting == "importance" else np.zeros(int(keep.sum()))
    p = np.exp(lw - lw.max())
    return (
        torch.as_tensor(data.x[keep], dtype=torch.float64, device=device),
        torch.as_tensor(p / p.sum(), dtype=torch.float64, device=device),
    )


def split_holdout(data: SampleSet, fraction: float, seed: int = 0) -> tuple[SampleSet, SampleSet]:
    """Split training frames into (train, held-out) without leaking correlated neighbours across the split.

    Frames with ``chain`` labels lose the last ``fraction`` of each chain (ordered by ``time``, if
    any): contiguous blocks, so that correlated neighbours of MD frames stay on one side. Unlabelled
    correlated frames (``metadata["correlated"]``) are one chain. Independent samples without chain
    labels (flow, SNF and other importance samplers) lose a random ``fraction`` of their frames.

    Parameters
    ----------
    data : SampleSet
        Training frames.
    fraction : float
        Held-out share, ``0 < fraction < 1``.
    seed : int
        Random stream of the held-out choice among independent samples.

    Returns
    -------
    tuple of SampleSet

    Raises
    ------
    ValueError
        If ``fraction`` is outside (0, 1) or leaves either side empty.

    Examples
    --------
    >>> import numpy as np
    >>> from boltzflow import SampleSet
    >>> independent = SampleSet(x=np.zeros((100, 2)), energies=np.zeros(100), log_weights=np.zeros(100))
    >>> [len(part) for part in split_holdout(independent, 0.1)]
    [90, 10]
    >>> chains = SampleSet(x=np.zeros((100, 2)), energies=np.zeros(100), log_weights=np.zeros(100),
    ...                    chain=np.repeat([0, 1], 50), metadata={"correlated": True})
    >>> train_part, held = split_holdout(chains, 0.1)
    >>> np.bincount(held.chain).tolist()
    [5, 5]
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    held = np.zeros(len(data), dtype=bool)
    if data.chain is None and not data.correlated:
        n_held = int(round(fraction * len(data)))
        held[np.random.default_rng(seed).choice(len(data), n_held, replace=False)] = True
    else:
        chains = np.zeros(len(data), dtype=np.int64) if data.chain is None else data.chain
        for chain in np.unique(chains):
            rows = np.flatnonzero(chains == chain)
            if data.time is not None:
                rows = rows[np.argsort(data.time[rows], kind="stable")]
            n_held = int(round(fraction * len(rows)))
            held[rows[len(rows) - n_held :]] = True
    if held.all() or not held.any():
        raise ValueError(f"cannot hold out {fraction:.0%} of {len(data)} frames")
    return data[~held], data[held]


def check_device(device: str | torch.device) -> torch.device:
    """``device`` parsed, if this machine has it: a one-line error instead of a failure mid-run.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For a string torch cannot parse, a device type other than these, or one this machine lacks.

    Examples
    --------
    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: unknown torch device 'gpu'; use cpu or cuda[:N]
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown torch device {str(device)!r}; use cpu or cuda[:N]") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: MPS is not available on this machine; use cpu")
    elif parsed.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; use cpu or cuda[:N]")
    return parsed


def _validation_nll(flow: FlowDistribution, x: torch.Tensor, p: torch.Tensor, batch: int = 2048) -> float:
    """Held-out ``−Σ p_i log q(x_i)`` (``p`` normalised sampling probabilities), without gradients."""
    flow.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            log_q = flow.log_prob(x[start : start + batch]).to(p)
            weights = p[start : start + batch]
            total -= float((weights * torch.where(weights > 0, log_q, 0.0)).sum())
    flow.train()
    return total


def _probe_ess(system: System, flow: FlowDistribution, n: int, seed: int, device: str) -> float:
    """Relative ESS of ``n`` flow draws, without gradients.

    The latent batch is seeded afresh on every call, so successive probes compare parameters on
    the same draws (common random numbers), and the training random stream is left untouched.
    """
    flow.eval()
    with torch.no_grad():
        x, log_q = flow.sample(n, torch.Generator(device=device).manual_seed(seed))
        u = torch.as_tensor(system.energy.evaluate(x.cpu(), need_gradient=False).energy).to(log_q)
    flow.train()
    return relative_ess(-u - log_q)


_CHECKPOINT_KEYS = ("run", "iteration", "flow", "optimizer", "rng", "history")


def _save_checkpoint(
    path: Path, run: dict[str, Any], iteration: int, flow: torch.nn.Module, optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None, generator: torch.Generator, history: Any,
    best: dict[str, torch.Tensor] | None,
) -> None:
    """Write a checksummed training checkpoint: run identity, architecture (``flow.config``) and state."""
    payload = {
        "run": run, "config": getattr(flow, "config", None), "iteration": iteration, "flow": flow.state_dict(),
        "optimizer": optimizer.state_dict(), "schedule": None if schedule is None else schedule.state_dict(),
        "best": best, "rng": generator.get_state(), "history": vars(history),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_torch(path, payload)


def _load_checkpoint(path: Path, run: dict[str, Any], device: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (verified, complete, of this run), or ``None`` when there is none."""
    if not path.exists():
        return None
    payload = read_torch(path, "training checkpoint", "delete it to start afresh", map_location=device,
                         error=TrainingCheckpointError)
    missing = [key for key in _CHECKPOINT_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise TrainingCheckpointError(
            f"training checkpoint {path} is incomplete (no {', '.join(missing)}); delete it to start afresh"
        )
    if payload["run"] != run:
        raise TrainingCheckpointError(
            f"training checkpoint {path} belongs to a different run ({differences(payload['run'], run)}); "
            "use another --out or delete it"
        )
    payload["path"] = path
    return payload


def _restore_checkpoint(
    saved: dict[str, Any], module: torch.nn.Module, optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None, generator: torch.Generator,
) -> int:
    """Load a checkpoint's model, optimiser, schedule and random state; return its iteration.

    A checkpoint of another architecture (``config``, or parameters that do not fit) raises
    :class:`TrainingCheckpointError`, as does an optimiser, schedule or random state that cannot be restored.
    """
    path = saved["path"]
    config = getattr(module, "config", None)
    changed = "" if saved.get("config") is None or config is None else differences(saved["config"], config)
    if changed:
        raise TrainingCheckpointError(
            f"training checkpoint {path} belongs to a different run ({changed}); use another --out or delete it"
        )
    try:
        module.load_state_dict(saved["flow"])
    except RuntimeError as err:
        raise TrainingCheckpointError(
            f"training checkpoint {path} belongs to a different run (another architecture: {error_summary(err)}); "
            "use another --out or delete it"
        ) from None
    try:
        optimizer.load_state_dict(saved["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["rng"].cpu())
        return int(saved["iteration"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise TrainingCheckpointError(
            f"training checkpoint {path} has an optimiser, schedule or random state that cannot be restored "
            f"({error_summary(err)}); delete it to start afresh"
        ) from None


def train(
    system: System,
    flow: FlowDistribution,
    data: SampleSet | None = None,
    n_iterations: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    w_ml: float = 1.0,
    w_kl: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
    device: str = "cpu",
    u_high: float = 1e3,
    u_max: float = 1e9,
    max_grad_norm: float = 100.0,
    ess_every: int = 50,
    data_weighting: str = "importance",
    lr_final: float | None = None,
    validation: SampleSet | None = None,
    validate_every: int = 200,
    rollback_factor: float | None = 2.0,
    probe_size: int = 1024,
) -> TrainingHistory:
    """Train ``flow`` in place with Adam on ``w_ml · ML + w_kl · KL``.

    Parameters
    ----------
    system : System
        Target distribution.
    flow : FlowDistribution
        The flow (e.g. from :func:`~boltzflow.flows.models.build_flow`), modified in place.
    data : SampleSet, optional
        Training configurations for the ML term, drawn with probability proportional to their
        weights (required when ``w_ml > 0``).
    n_iterations, batch_size : int
        Optimiser steps and samples per term per step.
    lr : float
        Adam learning rate.
    w_ml, w_kl : float
        Weights of the two losses (non-negative, not both zero).
    seed : int
        Seeds the parameter-free randomness (data batches, latent samples); the flow's own
        initial parameters are the caller's.
    progress : bool
        Show a progress bar with the loss and a running relative ESS (from the KL batch when
        ``w_kl > 0``, else from a batch of ``batch_size`` samples every ``ess_every`` steps).
    checkpoint : path, optional
        Training checkpoint (flow, optimiser, iteration, random state, history), written
        atomically every ``checkpoint_seconds`` and at the end; an existing checkpoint of the same
        run is resumed. The caller deletes it once the model is saved.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.
    device : str
        ``"cpu"`` or ``"cuda"`` (energies are still evaluated by the system's backend).
    u_high, u_max : float
        Loss-only energy cut, see :func:`cut_energy`.
    max_grad_norm : float
        Gradient-norm clipping threshold.
    ess_every : int
        Period of the ESS probe: of a batch of ``batch_size`` flow samples for the progress bar
        when ``w_kl == 0``; of the rollback probe when ``w_kl > 0`` (at the start and the end
        only, if not positive).
    data_weighting : {"importance", "uniform"}
        How ML batches are drawn from ``data``: in proportion to the samples' importance weights
        (an unbiased sample of the target), or uniformly (a deliberate mixture such as MD plus
        umbrella frames, meant to over-cover rare regions).
    lr_final : float, optional
        If given, the learning rate decays along a cosine from ``lr`` to ``lr_final``.
    validation : SampleSet, optional
        Held-out configurations (weighted like ``data``). Their negative log-likelihood is measured
        every ``validate_every`` steps and at the end, and the flow is left with the parameters
        that scored best (early stopping against overfitting the training frames).
    validate_every : int
        Period of the validation.
    rollback_factor : float or None
        Reverse-KL rollback (when ``w_kl > 0`` and no ``validation``; the held-out NLL decides
        otherwise): if the relative ESS of the probe batch at the end is below its best value
        divided by this factor (``> 1``), the flow keeps the parameters of the best probe instead
        (``history.rolled_back``, ``history.best_iteration``). ``None`` switches the probe off.
        The probe sees only where the flow puts mass: it cannot see a mode the flow has lost entirely.
    probe_size : int
        Flow draws in the rollback probe batch (energies without forces, ``probe_size / batch_size``
        of a training step's energy evaluations per ``ess_every`` steps).

    Returns
    -------
    TrainingHistory
    """
    if w_ml < 0 or w_kl < 0 or w_ml + w_kl == 0:
        raise ValueError("w_ml and w_kl must be non-negative and not both zero")
    if w_ml > 0 and data is None:
        raise ValueError("maximum-likelihood training (w_ml > 0) needs data")
    if n_iterations < 0 or batch_size < 1:
        raise ValueError("n_iterations must be >= 0 and batch_size >= 1")
    check_device(device)
    if rollback_factor is not None and not (rollback_factor > 1 and probe_size >= 1):
        raise ValueError(f"rollback_factor must exceed 1 (got {rollback_factor}) and probe_size be >= 1")
    probing = w_kl > 0 and validation is None and rollback_factor is not None and n_iterations > 0
    probe_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    flow.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    data_x, data_p = _data_sampler(data, system.dim, device, data_weighting) if w_ml > 0 else (None, None)
    valid_x, valid_p = (None, None) if validation is None else _data_sampler(
        validation, system.dim, device, data_weighting)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    schedule = None
    if lr_final is not None:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(n_iterations, 1), eta_min=lr_final)
    history = TrainingHistory()
    run = {
        "system": system.name, "dim": system.dim, "n_iterations": n_iterations, "batch_size": batch_size, "lr": lr,
        "w_ml": w_ml, "w_kl": w_kl, "seed": seed, "n_data": 0 if data_x is None else len(data_x),
        "data_weighting": data_weighting, "lr_final": lr_final,
        "n_validation": 0 if valid_x is None else len(valid_x), "validate_every": validate_every,
        "rollback_factor": rollback_factor if probing else None, "probe_size": probe_size if probing else None,
    }
    path = None if checkpoint is None else Path(checkpoint)
    start = 0
    best: dict[str, torch.Tensor] | None = None
    saved = None if path is None else _load_checkpoint(path, run, device)
    if saved is not None:
        start = _restore_checkpoint(saved, flow, optimizer, schedule, generator)
        history = TrainingHistory(**saved["history"])
        best = saved.get("best")
    last_save = time.monotonic()
    bar = tqdm(total=n_iterations, initial=start, desc=f"train {system.name}", disable=not progress, unit="it")
    flow.train()
    guard = InterruptGuard()  # a Ctrl-C saves the checkpoint at the end of the current step, then stops
    if path is not None:
        guard.arm()
    if probing and start == 0:
        history.probe_iteration.append(0)
        history.probe_ess.append(_probe_ess(system, flow, probe_size, probe_seed, device))
        best = {k: v.detach().clone() for k, v in flow.state_dict().items()}
    for iteration in range(start, n_iterations):
        step_start = time.monotonic()
        optimizer.zero_grad(set_to_none=True)
        ml = kl = torch.tensor(math.nan)
        loss = torch.zeros((), dtype=torch.float64, device=device)
        ess = history.relative_ess[-1] if history.relative_ess else math.nan
        if w_ml > 0:
            idx = torch.multinomial(data_p, batch_size, replacement=True, generator=generator)
            ml = ml_loss(flow, data_x[idx])
            loss = loss + w_ml * ml
        if w_kl > 0:
            kl, log_w, n_dropped = kl_loss(system, flow, batch_size, generator, u_high, u_max)
            history.n_dropped += n_dropped
            ess = relative_ess(log_w)
            loss = loss + w_kl * kl
        elif ess_every > 0 and iteration % ess_every == 0:
            with torch.no_grad():
                x, log_q = flow.sample(batch_size, generator)
                u = torch.as_tensor(system.energy.evaluate(x.cpu(), need_gradient=False).energy).to(log_q)
                ess = relative_ess(-u - log_q)
        grad_norm = torch.tensor(math.nan)
        if loss.requires_grad:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), max_grad_norm)
        if torch.isfinite(grad_norm):
            optimizer.step()
        else:
            history.n_skipped += 1
        if schedule is not None:
            schedule.step()
        history.loss.append(float(loss.detach()))
        history.ml.append(float(ml.detach()))
        history.kl.append(float(kl.detach()))
        history.relative_ess.append(ess)
        history.seconds += time.monotonic() - step_start
        bar.update(1)
        if iteration % 10 == 0 or iteration == n_iterations - 1:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", ess=f"{ess:.2f}")
        done = iteration + 1
        if valid_x is not None and (done % validate_every == 0 or done == n_iterations):
            nll = _validation_nll(flow, valid_x, valid_p)
            history.validation_iteration.append(done)
            history.validation_ml.append(nll)
            if best is None or nll <= min(history.validation_ml):
                best = {k: v.detach().clone() for k, v in flow.state_dict().items()}
                history.best_iteration = done
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", ess=f"{ess:.2f}", valid=f"{nll:.3f}")
        if probing and ((ess_every > 0 and done % ess_every == 0) or done == n_iterations):
            history.probe_iteration.append(done)
            history.probe_ess.append(_probe_ess(system, flow, probe_size, probe_seed, device))
            if history.probe_ess[-1] > max(history.probe_ess[:-1]):
                best = {k: v.detach().clone() for k, v in flow.state_dict().items()}
        if path is not None and (done == n_iterations or guard.requested
                                 or time.monotonic() - last_save >= checkpoint_seconds):
            _save_checkpoint(path, run, done, flow, optimizer, schedule, generator, history, best)
            last_save = time.monotonic()
            guard.honour()
    guard.disarm()
    bar.close()
    if probing:
        top = int(np.argmax(history.probe_ess))
        history.rolled_back = history.probe_ess[-1] < history.probe_ess[top] / rollback_factor
        if history.rolled_back:
            history.best_iteration = history.probe_iteration[top]
            flow.load_state_dict(best)
    elif best is not None:
        flow.load_state_dict(best)
    flow.eval()
    return history


__all__ = [
    "DATA_WEIGHTINGS", "TrainingCheckpointError", "TrainingHistory", "check_device", "cut_energy", "kl_loss",
    "ml_loss", "relative_ess", "split_holdout", "train",
]
