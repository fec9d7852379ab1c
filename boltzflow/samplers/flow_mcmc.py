"""MCMC with flow proposals: independent Metropolis–Hastings (IMH) and iterated SIR (i-SIR).

Both turn an imperfect flow ``q`` into an exact sampler of ``exp(−u)``: many chains run as one
batch; every iteration each chain makes one *global* move with fresh flow draws, scored by the
importance log-weight ``log w = −u(x) − log q(x)`` (true energies), optionally followed by
``local_steps`` MALA steps on the target energy (:mod:`.local_kernels`).

* IMH: propose ``x' ~ q`` and accept with ``min{1, w(x') / w(x)}``.
* i-SIR: draw ``N − 1`` proposals, and pick the next state among them *and the current state*
  with probabilities proportional to their weights.

The current state's ``log w`` is cached (recomputed with one ``log q`` pass only after local
moves). A proposal whose energy or flow density is not finite has zero weight: it is never
accepted, only counted (``n_nonfinite_proposals``). The samples are unweighted and correlated
(errors from autocorrelation); the global acceptance rate is the flow-quality signal.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..flows.distributions import FlowDistribution
from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint, restore_stored
from .flow import resolve_model
from .hmc import chain_columns
from .local_kernels import DualAveraging, mala_step, target_potential
from .metadata import run_metadata


def _log_weights(energies: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """``−u − log q``; ``−inf`` wherever either is not finite (zero weight)."""
    valid = np.isfinite(energies) & np.isfinite(log_q)
    with np.errstate(invalid="ignore"):
        return np.where(valid, -energies - log_q, -np.inf)


def _current_log_weights(energies: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """``−u − log q`` of chain states (finite ``u``); ``+inf`` where the flow cannot score the state.

    A state of zero or undefined flow density has infinite weight: global moves never leave it
    (the exact IMH rule for ``q = 0``), only local moves do.
    """
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(log_q), -energies - log_q, np.inf)


def _select(log_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per row, an index drawn with probability ∝ ``exp(log_w)`` (column 0, the current state, if all are zero)."""
    top = log_w.max(axis=1, keepdims=True)
    ok = np.isfinite(top[:, 0])
    with np.errstate(invalid="ignore"):
        p = np.exp(log_w - np.where(ok[:, None], top, 0.0))
    p[~ok] = 0.0
    p[~ok, 0] = 1.0
    cumulative = np.cumsum(p, axis=1)
    threshold = rng.uniform(size=log_w.shape[0]) * cumulative[:, -1]
    index = (cumulative <= threshold[:, None]).sum(axis=1)
    return np.minimum(index, log_w.shape[1] - 1)


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The flow draws of one iteration: an independent stream per step, so a resumed run is identical."""
    state = np.random.SeedSequence([seed, step, 0x1A5]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


class _FlowEvaluator:
    """Draws and densities of a flow on its device, returned as float64 numpy arrays."""

    def __init__(self, flow: FlowDistribution, seed: int) -> None:
        flow.eval()
        self.flow, self.seed = flow, seed
        self.device = next(flow.buffers()).device
        self.dtype = flow.base.dtype

    def sample(self, n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            x, log_q = self.flow.sample(n, _step_generator(self.seed, step, self.device))
        return x.cpu().to(torch.float64).numpy(), log_q.cpu().to(torch.float64).numpy()

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            log_q = self.flow.log_prob(torch.as_tensor(x, dtype=self.dtype, device=self.device))
        return log_q.cpu().to(torch.float64).numpy()


class GlobalMove(NamedTuple):
    """Result of one batched global (IMH or i-SIR) move; see :func:`global_move`."""

    x: np.ndarray
    u: np.ndarray
    g: np.ndarray | None
    log_w: np.ndarray
    taken: np.ndarray
    n_nonfinite: int
    n_energy_evaluations: int


def global_move(
    system: System,
    q: _FlowEvaluator,
    name: str,
    n_draws: int,
    x: np.ndarray,
    u: np.ndarray,
    g: np.ndarray | None,
    log_w: np.ndarray,
    step: int,
    need_gradient: bool,
    rng: np.random.Generator,
) -> GlobalMove:
    """One IMH (``name == "imh"``, ``n_draws == 1``) or i-SIR move of every chain.

    Fresh flow draws (stream ``step``) are scored against the cached current weights ``log_w``.
    With ``need_gradient`` the returned gradients ``g`` are those of the new states (``g`` is
    updated in place for i-SIR). ``n_energy_evaluations`` counts the rows sent to the energy.
    """
    n_chains = x.shape[0]
    y, log_q_y = q.sample(n_chains * n_draws, step)
    # IMH needs the gradient of its one proposal if accepted; i-SIR only that of the pick (below)
    proposal = system.energy.evaluate(y, need_gradient=need_gradient and name == "imh")
    n_evaluations = y.shape[0]
    log_w_y = _log_weights(proposal.energy, log_q_y)
    n_nonfinite = int(np.count_nonzero(~np.isfinite(log_w_y)))
    if name == "imh":
        with np.errstate(invalid="ignore"):
            log_alpha = log_w_y - log_w  # -inf for failed proposals and unscored states
        log_alpha = np.where(np.isnan(log_alpha), -np.inf, log_alpha)
        take = np.log(rng.uniform(size=n_chains)) < log_alpha
        pick = np.arange(n_chains)
    else:
        choice = _select(np.concatenate([log_w[:, None], log_w_y.reshape(n_chains, n_draws)], axis=1), rng)
        take = choice > 0
        pick = np.arange(n_chains) * n_draws + np.maximum(choice - 1, 0)
    x = np.where(take[:, None], y[pick], x)
    u = np.where(take, proposal.energy[pick], u)
    log_w = np.where(take, log_w_y[pick], log_w)
    if need_gradient and name == "imh":
        g = np.where(take[:, None], proposal.gradient[pick], g)
    elif need_gradient and take.any():
        g[take] = system.energy.evaluate(x[take]).gradient
        n_evaluations += int(take.sum())
    return GlobalMove(x, u, g, log_w, take, n_nonfinite, n_evaluations)


def _run(
    system: System,
    n: int,
    seed: int,
    model: str | Path | FlowDistribution | None,
    name: str,
    n_proposals: int,
    n_chains: int,
    thin: int,
    warmup: int,
    local_steps: int,
    local_step_size: float,
    local_target_acceptance: float,
    progress: bool,
    checkpoint: str | Path | None,
    checkpoint_seconds: float,
) -> SampleSet:
    """The chain loop shared by IMH (``name == "imh"``) and i-SIR (``name == "isir"``)."""
    flow, model_name = resolve_model(system, model)
    if n < 1 or n_chains < 1 or thin < 1 or warmup < 0 or local_steps < 0:
        raise ValueError("n, n_chains and thin must be >= 1, warmup and local_steps >= 0")
    if name == "isir" and n_proposals < 2:
        raise ValueError(f"i-SIR needs n_proposals >= 2 (the current state and at least one draw), got {n_proposals}")
    n_chains = min(n_chains, n)
    per_chain = math.ceil(n / n_chains)
    total = warmup + per_chain * thin
    n_draws = 1 if name == "imh" else n_proposals - 1
    ckpt = Checkpoint(
        checkpoint,
        run={"system": system.name, "sampler": name, "n": n, "seed": seed, "model": model_name,
             "n_proposals": n_draws + 1, "n_chains": n_chains, "thin": thin, "warmup": warmup,
             "local_steps": local_steps, "local_step_size": local_step_size,
             "local_target_acceptance": local_target_acceptance},
        every_seconds=checkpoint_seconds,
    )
    q = _FlowEvaluator(flow, seed)
    potential = target_potential(system.energy)
    need_gradient = local_steps > 0
    rng = np.random.default_rng(seed)
    adapter = DualAveraging(local_step_size, n_chains, local_target_acceptance)
    h = adapter.step_size if warmup > 0 else adapter.final()
    h_warmup_end = h.copy() if warmup == 0 else None
    x = np.repeat(system.x0.numpy()[None], n_chains, axis=0)
    stored = np.empty((per_chain, n_chains, system.dim))
    stored_u = np.empty((per_chain, n_chains))
    step = 0
    counts = {key: 0 for key in ("global_warmup", "global", "local_warmup", "local", "nonfinite", "local_divergent")}
    resumed = ckpt.load()
    if resumed is not None:
        arrays, info = resumed
        x, h = arrays["x"], arrays["h"]
        adapter.load(arrays)
        restore_stored(arrays, stored, stored_u)
        step, counts = info["step"], info["counts"]
        if "h_warmup_end" in arrays:
            h_warmup_end = arrays["h_warmup_end"]
        rng.bit_generator.state = info["rng"]
    start = system.energy.evaluate(x, need_gradient=need_gradient)
    u, g = start.energy, start.gradient
    if not np.isfinite(u).all():
        raise ValueError(f"system '{system.name}': non-finite energy at the starting configuration")
    log_w = _log_weights(u, q.log_prob(x))
    if not np.isfinite(log_w).all():
        raise ValueError(f"the flow's density is not finite at the starting configuration of '{system.name}'")

    label = "IMH" if name == "imh" else f"i-SIR(N={n_proposals})"
    bar = tqdm(total=total, initial=step, desc=f"{label} {system.name}", disable=not progress, unit="step")
    while step < total:
        warm = step < warmup
        # ---- global move: fresh flow draws scored against the cached current weight
        move = global_move(system, q, name, n_draws, x, u, g, log_w, step, need_gradient, rng)
        x, u, g, log_w, take = move.x, move.u, move.g, move.log_w, move.taken
        counts["nonfinite"] += move.n_nonfinite
        counts["global_warmup" if warm else "global"] += int(take.sum())
        # ---- local moves on the target, then the current weight again
        for _ in range(local_steps):
            move = mala_step(potential, x, u, g, h, rng)
            x, u, g = move.x, move.u, move.g
            counts["local_warmup" if warm else "local"] += int(move.accepted.sum())
            counts["local_divergent"] += move.n_divergent
            if warm:
                adapter.update(move.accept_prob)
                h = adapter.step_size
        if local_steps:
            log_w = _current_log_weights(u, q.log_prob(x))
        step += 1
        if step == warmup:
            h = adapter.final()  # frozen from here on: production is exact
            h_warmup_end = h.copy()
        if not warm and (step - warmup) % thin == 0:
            stored[(step - warmup) // thin - 1] = x
            stored_u[(step - warmup) // thin - 1] = u
        if step % 10 == 0 or step == total:
            bar.update(step - bar.n)
            bar.set_postfix(_rates(counts, step, warmup, n_chains, local_steps, short=True))
        if ckpt.due() or (step == total and ckpt.path is not None):
            n_stored = max(0, (step - warmup) // thin)
            arrays = {"x": x, "h": h, "stored": stored[:n_stored], "stored_u": stored_u[:n_stored], **adapter.state()}
            if h_warmup_end is not None:
                arrays["h_warmup_end"] = h_warmup_end
            ckpt.save(arrays, {"step": step, "counts": counts, "rng": rng.bit_generator.state})
    bar.close()

    chain, time = chain_columns(n, n_chains, per_chain, thin)
    return SampleSet(
        x=stored.transpose(1, 0, 2).reshape(-1, system.dim)[:n],
        energies=stored_u.T.reshape(-1)[:n],
        chain=chain,
        time=time,
        metadata=run_metadata(
            system, name, seed, correlated=True, normalized_proposal=False, checkpoint=ckpt,
            model=model_name, n_chains=n_chains, thin=thin, warmup=warmup,
            **({"n_proposals": n_proposals} if name == "isir" else {}),
            **_rates(counts, total, warmup, n_chains, local_steps, short=False),
            n_nonfinite_proposals=counts["nonfinite"],
            local_steps=local_steps,
            local_step_sizes=[float(v) for v in h] if local_steps else None,
            local_step_sizes_warmup_end=[float(v) for v in h_warmup_end] if local_steps else None,
            n_local_divergent=counts["local_divergent"],
        ),
    )


def _rates(counts: dict[str, int], step: int, warmup: int, n_chains: int, local_steps: int, short: bool) -> dict[str, Any]:
    """Acceptance rates of global and local moves (progress-bar form or metadata form)."""
    done_warm, done_prod = min(step, warmup), max(step - warmup, 0)
    if short:  # the current phase only
        key, steps = ("global", done_prod) if done_prod else ("global_warmup", done_warm)
        rates = {"global": f"{counts[key] / max(steps * n_chains, 1):.2f}"}
        if local_steps:
            lkey = "local" if done_prod else "local_warmup"
            rates["local"] = f"{counts[lkey] / max(steps * n_chains * local_steps, 1):.2f}"
        return rates
    rates: dict[str, Any] = {
        "acceptance_rate": counts["global"] / max(done_prod * n_chains, 1),
        "global_acceptance_rate": counts["global"] / max(done_prod * n_chains, 1),
        "warmup_global_acceptance_rate": counts["global_warmup"] / max(done_warm * n_chains, 1),
        "local_acceptance_rate": None,
        "warmup_local_acceptance_rate": None,
    }
    if local_steps:
        rates["local_acceptance_rate"] = counts["local"] / max(done_prod * n_chains * local_steps, 1)
        rates["warmup_local_acceptance_rate"] = counts["local_warmup"] / max(done_warm * n_chains * local_steps, 1)
    return rates


def sample_imh(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | FlowDistribution | None = None,
    n_chains: int = 32,
    thin: int = 1,
    warmup: int = 100,
    local_steps: int = 0,
    local_step_size: float = 1e-3,
    local_target_acceptance: float = 0.57,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Flow independent Metropolis–Hastings: propose ``x' ~ q``, accept with ``min{1, w(x')/w(x)}``.

    ``log w = −u − log q`` in log space; each iteration costs one flow draw and one energy
    evaluation per chain (plus ``local_steps`` MALA steps).

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of samples returned (split over the chains, chain-major order).
    seed : int
        Seed of the flow draws and the accept/select decisions.
    model : path or FlowDistribution, optional
        A model file written by :func:`~boltzflow.flows.models.save_model`, or a flow object.
        Default: the model shipped for a built-in system (see :func:`.flow.resolve_model`).
    n_chains : int
        Number of chains, run as one batch, all started at ``system.x0``.
    thin : int
        Iterations (one global move plus ``local_steps`` MALA steps) between stored samples.
    warmup : int
        Discarded iterations; the MALA step sizes adapt during them only.
    local_steps : int
        MALA steps on the target energy after each global move (0: pure flow moves).
    local_step_size : float
        Initial MALA step size ``h`` (adapted per chain during warm-up, then frozen).
    local_target_acceptance : float
        Acceptance probability the MALA step sizes adapt toward.
    progress : bool
        Show a progress bar with the global (and local) acceptance rates.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Unweighted, correlated samples with ``chain`` and ``time`` (iteration) columns and their
        true energies. Metadata: ``global_acceptance_rate`` (also ``acceptance_rate``),
        ``local_acceptance_rate``, their warm-up values, ``n_nonfinite_proposals`` (proposals with
        non-finite energy or flow density, all rejected) and the per-chain MALA step sizes at the
        end of warm-up and in production (equal: frozen).

    Raises
    ------
    ValueError
        Without a model for a system that ships none, for invalid settings, or when the energy or
        the flow density is not finite at ``system.x0``.
    """
    return _run(system, n, seed, model, "imh", 2, n_chains, thin, warmup, local_steps, local_step_size,
                local_target_acceptance, progress, checkpoint, checkpoint_seconds)


def sample_isir(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | FlowDistribution | None = None,
    n_proposals: int = 16,
    n_chains: int = 32,
    thin: int = 1,
    warmup: int = 100,
    local_steps: int = 0,
    local_step_size: float = 1e-3,
    local_target_acceptance: float = 0.57,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Iterated sampling importance resampling (i-SIR) with flow proposals.

    The next state is drawn among the current state and ``n_proposals − 1`` fresh flow draws,
    with probabilities ∝ their weights ``w = exp(−u − log q)``. The global acceptance rate is
    the fraction of iterations that pick a fresh draw.

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of samples returned (split over the chains, chain-major order).
    seed : int
        Seed of the flow draws and the accept/select decisions.
    model : path or FlowDistribution, optional
        A model file written by :func:`~boltzflow.flows.models.save_model`, or a flow object.
        Default: the model shipped for a built-in system (see :func:`.flow.resolve_model`).
    n_proposals : int
        Candidates per iteration ``N`` (>= 2), the current state included: ``N − 1`` fresh
        flow draws per chain and iteration.
    n_chains : int
        Number of chains, run as one batch, all started at ``system.x0``.
    thin : int
        Iterations (one global move plus ``local_steps`` MALA steps) between stored samples.
    warmup : int
        Discarded iterations; the MALA step sizes adapt during them only.
    local_steps : int
        MALA steps on the target energy after each global move (0: pure flow moves).
    local_step_size : float
        Initial MALA step size ``h`` (adapted per chain during warm-up, then frozen).
    local_target_acceptance : float
        Acceptance probability the MALA step sizes adapt toward.
    progress : bool
        Show a progress bar with the global (and local) acceptance rates.
    checkpoint : path, optional
        Checkpoint file; an existing one from the same run is resumed.
    checkpoint_seconds : float
        Wall-clock seconds between checkpoints.

    Returns
    -------
    SampleSet
        Unweighted, correlated samples with ``chain`` and ``time`` (iteration) columns and their
        true energies. Metadata: ``global_acceptance_rate`` (also ``acceptance_rate``),
        ``local_acceptance_rate``, their warm-up values, ``n_nonfinite_proposals`` (proposals with
        non-finite energy or flow density, all rejected) and the per-chain MALA step sizes at the
        end of warm-up and in production (equal: frozen).

    Raises
    ------
    ValueError
        Without a model for a system that ships none, for invalid settings, or when the energy or
        the flow density is not finite at ``system.x0``.
    """
    return _run(system, n, seed, model, "isir", n_proposals, n_chains, thin, warmup, local_steps,
                local_step_size, local_target_acceptance, progress, checkpoint, checkpoint_seconds)
