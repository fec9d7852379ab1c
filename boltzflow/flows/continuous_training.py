"""Training a continuous flow: flow matching for the velocity, then σ_F for flow perturbation.

Flow matching (rectified-flow interpolation): for data ``s0`` (standardised internal coordinates)
and latent ``s1 ~ N(0, I)``, the straight path ``s_t = (1 − t)·s0 + t·s1`` has velocity
``s1 − s0``; the loss is ``E_{t ~ U(0,1)} ‖v(s_t, t) − (s1 − s0)‖² / d``. Its minimiser transports
the data distribution to the latent one. Data rows are drawn by their importance weights (or
uniformly, for a deliberate training mixture), optionally rotated at random about their centre
every batch (particles and molecules). Checkpoints are atomic and a rerun of the same training
resumes (:func:`train_continuous_flow`).

σ_F (:func:`train_sigma_f`): on pairs ``x_T ~ N(0, I)``, ``ε ~ N(0, I)``,
``x0 = B(x_T) + σ_B·ε``, minimise ``E|‖ε̃‖² − ‖ε‖²|`` with ``ε̃ = (x_T − F(x0)) / σ_F(x0)``
(Peng & Gao); the velocity is frozen. Any σ_F keeps flow-perturbation weights unbiased; a good
one keeps their variance small.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..io import InterruptGuard
from ..samples import SampleSet
from ..systems.system import System
from .continuous import ContinuousFlow, configurations, rotate_frames
from .training import _data_sampler, _load_checkpoint, _restore_checkpoint, _save_checkpoint


@dataclass
class ContinuousTrainingHistory:
    """Record of flow-matching training.

    Attributes
    ----------
    loss : list of float
        Flow-matching loss per iteration (mean squared velocity error per coordinate).
    n_skipped : int
        Steps skipped because the gradients were not finite.
    seconds : float
        Wall-clock time in training steps, summed over resumed sessions.
    """

    loss: list[float] = field(default_factory=list)
    n_skipped: int = 0
    seconds: float = 0.0


def flow_matching_loss(flow: ContinuousFlow, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``mean ‖v(s_t, t) − (s1 − s0)‖² / d`` over a batch of internal coordinates ``y (B, d)``."""
    s0 = flow.standardize(y)
    s1 = torch.randn(s0.shape, generator=generator, dtype=s0.dtype, device=s0.device)
    t = torch.rand(s0.shape[0], generator=generator, dtype=s0.dtype, device=s0.device)
    st = (1.0 - t[:, None]) * s0 + t[:, None] * s1
    return ((flow.velocity_field(st, t) - (s1 - s0)) ** 2).mean()


def _as_sample_set(data: SampleSet | np.ndarray, dim: int) -> SampleSet:
    if isinstance(data, SampleSet):
        return data
    x = configurations(data, dim)
    return SampleSet(x=x, energies=np.zeros(len(x)))


def train_continuous_flow(
    system: System,
    flow: ContinuousFlow,
    data: SampleSet | np.ndarray,
    n_iterations: int = 5000,
    batch_size: int = 256,
    lr: float = 1e-3,
    lr_final: float | None = None,
    seed: int = 0,
    augment_rotations: bool = False,
    data_weighting: str = "importance",
    max_grad_norm: float = 10.0,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
    device: str = "cpu",
) -> ContinuousTrainingHistory:
    """Train ``flow``'s velocity in place by flow matching on ``data`` (Adam, gradient clipping).

    Parameters
    ----------
    system : System
        The system the data belong to (dimension check, checkpoint identity).
    flow : ContinuousFlow
        From :func:`~boltzflow.flows.continuous.build_continuous_flow` (standardisation fitted).
    data : SampleSet or array
        Training configurations ``(N, D)``.
    n_iterations, batch_size : int
        Optimiser steps and rows per step.
    lr, lr_final : float
        Adam learning rate; with ``lr_final`` it decays along a cosine to that value.
    seed : int
        Seeds batches, latent draws, times and rotations.
    augment_rotations : bool
        Rotate every batch row by a fresh random rotation about its centre (particles/molecules).
    data_weighting : {"importance", "uniform"}
        Draw rows by their importance weights or uniformly.
    max_grad_norm : float
        Gradient-norm clipping threshold.
    progress : bool
        Progress bar with the loss.
    checkpoint : path, optional
        Training checkpoint, written atomically every ``checkpoint_seconds`` and at the end; an
        existing one of the same run is resumed (the caller deletes it once the model is saved).
    checkpoint_seconds : float
        Seconds between checkpoints.
    device : str
        Torch device.

    Returns
    -------
    ContinuousTrainingHistory
    """
    if n_iterations < 0 or batch_size < 1:
        raise ValueError("n_iterations must be >= 0 and batch_size >= 1")
    if augment_rotations and flow.particles is None:
        raise ValueError("rotation augmentation needs a flow on particle coordinates (remove_centre)")
    samples = _as_sample_set(data, system.dim)
    if samples.dim != flow.dim:
        raise ValueError(f"training data have dimension {samples.dim}, the flow {flow.dim}")
    flow.to(device)
    data_x, data_p = _data_sampler(samples, system.dim, device, data_weighting)
    internal = None if augment_rotations else flow.to_internal(data_x)
    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = torch.optim.Adam(flow.velocity.parameters(), lr=lr)
    schedule = None
    if lr_final is not None:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(n_iterations, 1), eta_min=lr_final)
    run = {"system": system.name, "dim": system.dim, "kind": "flow matching", "n_iterations": n_iterations,
           "batch_size": batch_size, "lr": lr, "lr_final": lr_final, "seed": seed, "n_data": len(data_x),
           "augment_rotations": augment_rotations, "data_weighting": data_weighting}
    path = None if checkpoint is None else Path(checkpoint)
    history = ContinuousTrainingHistory()
    start = 0
    saved = None if path is None else _load_checkpoint(path, run, device)
    if saved is not None:
        start = _restore_checkpoint(saved, flow, optimizer, schedule, generator)
        history = ContinuousTrainingHistory(**saved["history"])
    last_save = time.monotonic()
    bar = tqdm(total=n_iterations, initial=start, desc=f"flow matching {system.name}", disable=not progress,
               unit="it")
    flow.train()
    guard = InterruptGuard()  # a Ctrl-C saves the checkpoint at the end of the current step, then stops
    if path is not None:
        guard.arm()
    for iteration in range(start, n_iterations):
        step_start = time.monotonic()
        idx = torch.multinomial(data_p, batch_size, replacement=True, generator=generator)
        if augment_rotations:
            rng = np.random.default_rng([seed, iteration])  # a fixed stream per step: resumes identically
            rotated = rotate_frames(data_x[idx].cpu().numpy(), flow.particles, rng)
            y = flow.to_internal(torch.as_tensor(rotated, dtype=data_x.dtype, device=device))
        else:
            y = internal[idx]
        optimizer.zero_grad(set_to_none=True)
        loss = flow_matching_loss(flow, y, generator)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(flow.velocity.parameters(), max_grad_norm)
        if torch.isfinite(grad_norm):
            optimizer.step()
        else:
            history.n_skipped += 1
        if schedule is not None:
            schedule.step()
        history.loss.append(float(loss.detach()))
        history.seconds += time.monotonic() - step_start
        bar.update(1)
        if iteration % 10 == 0 or iteration == n_iterations - 1:
            recent = history.loss[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        done = iteration + 1
        if path is not None and (done == n_iterations or guard.requested
                                 or time.monotonic() - last_save >= checkpoint_seconds):
            _save_checkpoint(path, run, done, flow, optimizer, schedule, generator, history, None)
            last_save = time.monotonic()
            guard.honour()
    guard.disarm()
    bar.close()
    flow.eval()
    return history


def perturbation_pairs(
    flow: ContinuousFlow, n: int, sigma_b: float, generator: torch.Generator | None = None, batch_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training pairs of σ_F: ``x0 = B(x_T) + σ_B·ε``, ``‖x_T − F(x0)‖²`` and ``‖ε‖²`` (no gradients).

    Returns
    -------
    x0 : torch.Tensor
        ``(n, d)`` perturbed internal coordinates.
    residual_sq : torch.Tensor
        ``(n,)`` squared forward residuals.
    noise_sq : torch.Tensor
        ``(n,)`` ``‖ε‖²``.
    """
    x0, residual_sq, noise_sq = [], [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            z = flow.sample_latent(size, generator)
            eps = flow.sample_latent(size, generator)
            y = flow.decode(z) + sigma_b * eps
            x0.append(y)
            residual_sq.append(((z - flow.encode(y)) ** 2).sum(-1))
            noise_sq.append((eps**2).sum(-1))
    return torch.cat(x0), torch.cat(residual_sq), torch.cat(noise_sq)


def train_sigma_f(
    flow: ContinuousFlow,
    n_pairs: int = 4096,
    n_iterations: int = 1000,
    batch_size: int = 512,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Fit σ_F of ``flow`` (velocity frozen) by ``E|‖ε̃‖² − ‖ε‖²|`` on ``n_pairs`` fresh pairs.

    The scale ``c`` of :class:`~boltzflow.flows.continuous.SigmaF` is set to the median of
    ``‖x_T − F(x0)‖ / ‖ε‖`` over the pairs and ``a`` to 1 (a good constant σ_F to start from);
    the pairs cost two ODE passes each and are drawn once.

    Parameters
    ----------
    flow : ContinuousFlow
        Trained flow; its ``sigma_b`` is the σ_B of the pairs.
    n_pairs : int
        Training pairs.
    n_iterations, batch_size : int
        Adam steps and pairs per step.
    lr : float
        Adam learning rate, decayed along a cosine to ``lr / 100``.
    seed : int
        Seed of the pairs and batches.
    progress : bool
        Progress bar.

    Returns
    -------
    list of float
        The loss per step.
    """
    if n_pairs < 2 or n_iterations < 0 or batch_size < 1:
        raise ValueError("need n_pairs >= 2, n_iterations >= 0 and batch_size >= 1")
    generator = torch.Generator(device=flow.loc.device).manual_seed(seed)
    flow.eval()
    x0, residual_sq, noise_sq = perturbation_pairs(flow, n_pairs, flow.sigma_b, generator)
    finite = torch.isfinite(residual_sq) & torch.isfinite(x0).all(-1)
    if not finite.any():
        raise ValueError("no finite perturbation pair: the flow's ODE diverges")
    x0, residual_sq, noise_sq = x0[finite], residual_sq[finite], noise_sq[finite]
    s0 = flow.standardize(x0)
    with torch.no_grad():
        flow.sigma_f.unit.fill_(float(torch.sqrt(residual_sq / noise_sq).median()))
        flow.sigma_f.a.fill_(1.0)
    optimizer = torch.optim.Adam(flow.sigma_f.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(n_iterations, 1), eta_min=lr / 100)
    losses = []
    for _ in tqdm(range(n_iterations), desc="sigma_F", disable=not progress, unit="it"):
        idx = torch.randint(0, len(s0), (batch_size,), generator=generator, device=s0.device)
        sigma = flow.sigma_f(s0[idx])
        loss = (residual_sq[idx] / sigma**2 - noise_sq[idx]).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    flow.eval()
    if not all(math.isfinite(v) for v in losses):
        raise ValueError("sigma_F training diverged (non-finite loss); try a smaller lr")
    return losses


__all__ = ["ContinuousTrainingHistory", "flow_matching_loss", "perturbation_pairs", "train_continuous_flow",
           "train_sigma_f"]
