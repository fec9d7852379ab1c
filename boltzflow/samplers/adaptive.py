"""Adaptive flow-MCMC: global flow moves and local MALA moves, with the flow trained on the chains.

The run has two clearly separated phases (Gabrié, Rotskoff & Vanden-Eijnden 2022; flowMC):

1. **Adaptation** (discarded). ``local_warmup`` MALA steps from ``system.x0`` spread the chains
   and adapt the MALA step sizes; then ``adapt_iterations`` iterations of one global move (IMH
   or i-SIR, :func:`.flow_mcmc.global_move`) followed by ``local_steps`` MALA steps. Every
   iteration appends the chain states to a replay buffer (the ``buffer_size`` most recent
   states); every ``train_every`` iterations the flow takes ``train_steps`` Adam steps on
   maximum likelihood (forward KL) of uniform batches from the buffer, plus ``w_kl`` times the
   reverse KL through the energy's forces, plus ``w_reweighted`` times the importance-reweighted
   maximum likelihood on fresh flow draws (below). After each training round the cached weights
   of the current states are recomputed with the new flow. The MALA step sizes adapt (dual
   averaging) throughout.
2. **Production** (returned). Flow and step sizes are frozen: the chains are exact IMH/i-SIR +
   MALA chains of ``exp(−u)``. The flow's parameter hash is recorded at the start and the end of
   production (``flow_sha256_production_start`` / ``..._end``) as evidence.

**Importance-reweighted maximum likelihood** (``w_reweighted > 0``; mass-covering and
self-correcting). The buffer holds chain states, and chains switch basins slowly: a basin the
chains under-visit is under-represented in the buffer, maximum likelihood on the buffer shrinks the
flow's mass there, the global moves propose it still more rarely, and so on (mode collapse). At the
start of every training round ``reweighted_batch_size`` fresh draws ``x ~ q`` (no gradient) are
scored with their true energies, ``log w = −u(x) − log q(x)`` (zero weight where either is not
finite), and every training step of the round adds ``−w_reweighted · Σ w̄_i log q(x_i)`` with
self-normalised weights ``w̄``. Its expectation is (up to a constant) the forward KL from the
Boltzmann distribution to ``q``: it moves the flow's mass of each basin toward its Boltzmann
share, not the buffer's. Two documented safeguards against weight degeneracy (both bias the term
toward ``q`` only where the flow is poor): tempering ``w̄ ∝ w^γ`` with ``γ = reweighted_power``
(1: none) — one round then targets ``p^γ q^(1−γ)``, whose fixed point over the rounds is still
``q = p``, with a much larger effective sample size — and clipping, every weight above the
``1 − reweighted_clip`` quantile of the finite weights set to that quantile (0: none). The draws cost ``reweighted_batch_size`` energy
evaluations per round (counted in the adaptation's evaluations); the weights of a round's draws
stay those of the flow that drew them, which keeps them valid while the flow takes that round's
steps. The Kish relative ESS of each round's untempered, unclipped weights is recorded
(``adaptation_reweighted_ess_history``).

``model="new"`` needs no data at all: after the local warm-up an untrained flow is built with
:func:`~boltzflow.flows.models.build_flow` on the chain states (molecules: every dihedral kept
circular, so the flow covers all torsions). For toy systems its standardisation is then made
isotropic and broad — every coordinate gets ``init_scale`` × the largest standard deviation of
the states — so that the untrained flow proposes far beyond the starting basin and the global
moves can discover other basins, which the replay buffer then teaches the flow.
"""

from __future__ import annotations

import hashlib
import json
import math
import time as clock
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..flows.distributions import FlowDistribution
from ..flows.models import Standardize, build_flow, flow_from_config, save_model
from ..flows.training import kl_loss
from ..samples import SampleSet
from ..systems.system import System
from .checkpoint import Checkpoint, restore_stored
from .flow import resolve_model
from .flow_mcmc import _current_log_weights, _FlowEvaluator
from .flow_mcmc import global_move as _global_move
from .hmc import chain_columns
from .local_kernels import DualAveraging, mala_step
from .metadata import run_metadata

GLOBAL_MOVES = ("imh", "isir")


def flow_hash(flow: FlowDistribution) -> str:
    """SHA-256 of a flow's state dict (parameters and buffers): equal hashes, identical flows."""
    digest = hashlib.sha256()
    for name, value in flow.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _new_flow(
    system: System, states: np.ndarray, init_scale: float, options: dict[str, Any], seed: int
) -> FlowDistribution:
    """An untrained flow fitted to ``states``; toy flows get an isotropic, ``init_scale``-broadened standardisation.

    The initial network weights come from ``seed`` (the global torch random state is left untouched).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([seed, 0xF10]).generate_state(1)[0]))
        flow = build_flow(system, data=states, **{"max_linear_std": None, **options})
    for module in flow.modules():
        if isinstance(module, Standardize):
            with torch.no_grad():
                module.scale.fill_(float(module.scale.max()) * init_scale)
    return flow


def _config_info(flow: FlowDistribution, new: bool) -> dict[str, Any]:
    """Checkpoint info that rebuilds a new flow's architecture on resume (it depends on the warmed-up states)."""
    config = getattr(flow, "config", None)
    return {"flow_config": json.loads(json.dumps(config))} if new and config is not None else {}


def _state_arrays(flow: FlowDistribution) -> dict[str, np.ndarray]:
    return {f"flow:{k}": v.detach().cpu().numpy() for k, v in flow.state_dict().items()}


def _load_state(flow: FlowDistribution, arrays: dict[str, np.ndarray]) -> None:
    state = {k[len("flow:"):]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("flow:")}
    flow.load_state_dict(state)


def sample_adaptive(
    system: System,
    n: int,
    seed: int = 0,
    model: str | Path | FlowDistribution | None = None,
    n_chains: int = 32,
    global_move: Literal["imh", "isir"] = "isir",
    n_proposals: int = 16,
    production_proposals: int | None = None,
    local_steps: int = 1,
    local_step_size: float = 1e-3,
    local_target_acceptance: float = 0.57,
    local_warmup: int = 100,
    adapt_iterations: int = 500,
    train_every: int = 5,
    train_steps: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    w_kl: float = 0.0,
    w_reweighted: float = 0.0,
    reweighted_batch_size: int = 1024,
    reweighted_power: float = 1.0,
    reweighted_clip: float = 0.01,
    buffer_size: int = 4096,
    thin: int = 1,
    init_scale: float = 2.0,
    flow_options: dict[str, Any] | None = None,
    max_grad_norm: float = 100.0,
    save_flow: str | Path | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 60.0,
) -> SampleSet:
    """Adaptive flow-MCMC: train the flow on the chains (adaptation), then sample with it frozen (production).

    See the module docstring for the algorithm. Only production samples are returned, so they
    are exact (unweighted, correlated) samples of ``exp(−u)`` whatever the flow's quality.

    Parameters
    ----------
    system : System
        Target.
    n : int
        Number of production samples returned (split over the chains, chain-major order).
    seed : int
        Seed of the flow draws, accept/select decisions, MALA noise and training batches.
    model : path, FlowDistribution, "new" or None
        The flow: a model file, a flow object (**adapted in place**: after the run it holds the
        adapted parameters), ``"new"`` (an untrained flow built on the chain states after the
        local warm-up, no data needed), or ``None`` for the model shipped with a built-in system
        (loaded fresh, then adapted).
    n_chains : int
        Number of chains, run as one batch, all started at ``system.x0``.
    global_move : {"imh", "isir"}
        Independent Metropolis–Hastings or iterated SIR.
    n_proposals : int
        i-SIR candidates per iteration (current state included, >= 2); ignored for IMH.
    production_proposals : int, optional
        i-SIR candidates per production iteration (default: ``n_proposals``). More candidates let
        the chains move between basins whose flow mass is too small: with the flow adapted from
        C7eq alone, alanine dipeptide needed 64 (see ``examples/adaptive_alanine.py``).
    local_steps : int
        MALA steps on the target after each global move (adaptation and production).
    local_step_size : float
        Initial MALA step size (adapted per chain during adaptation, then frozen).
    local_target_acceptance : float
        Acceptance probability the MALA step sizes adapt toward.
    local_warmup : int
        MALA-only steps at the start of adaptation (before any global move). Required (>= 1)
        for ``model="new"``: the new flow is fitted to the states they reach.
    adapt_iterations : int
        Adaptation iterations with global moves and flow training (discarded).
    train_every : int
        Adaptation iterations between training rounds.
    train_steps : int
        Adam steps per training round.
    batch_size : int
        Buffer states per maximum-likelihood batch (and flow draws per reverse-KL batch).
    lr : float
        Adam learning rate (one optimiser for the whole adaptation).
    w_kl : float
        Weight of the reverse KL term (0: forward KL / maximum likelihood only).
    w_reweighted : float
        Weight of the importance-reweighted maximum-likelihood term on fresh flow draws (0: off;
        see the module docstring). Counteracts mode collapse when the chains under-visit a basin.
    reweighted_batch_size : int
        Fresh flow draws (and energy evaluations) per training round for that term.
    reweighted_power : float
        Tempering exponent ``γ`` in ``(0, 1]`` of its weights, ``w̄ ∝ w^γ`` (1: exact weights).
    reweighted_clip : float
        Fraction in ``[0, 1)`` of the largest weights clipped to the ``1 − reweighted_clip``
        quantile of the finite weights (0: no clipping).
    buffer_size : int
        Replay buffer: the most recent chain states used for maximum likelihood.
    thin : int
        Production iterations between stored samples.
    init_scale : float
        ``model="new"`` on toy systems: the standardisation scale of every coordinate is
        ``init_scale`` × the largest standard deviation of the warmed-up chain states.
    flow_options : dict, optional
        ``model="new"``: keyword arguments of :func:`~boltzflow.flows.models.build_flow`
        (e.g. ``{"n_layers": 4, "hidden": (32, 32)}``).
    max_grad_norm : float
        Gradient-norm clipping of the training steps.
    save_flow : path, optional
        Write the adapted (production) flow here with :func:`~boltzflow.flows.models.save_model`.
    progress : bool
        Show a progress bar with the global and local acceptance rates.
    checkpoint : path, optional
        Checkpoint file, written at the end of adaptation (flow state included) and every
        ``checkpoint_seconds`` of production; an existing one from the same run is resumed
        (an adaptation interrupted before its end starts again).
    checkpoint_seconds : float
        Wall-clock seconds between production checkpoints.

    Returns
    -------
    SampleSet
        Unweighted, correlated production samples with ``chain`` and ``time`` columns. Metadata:
        ``global_acceptance_rate`` (also ``acceptance_rate``), ``local_acceptance_rate`` and their
        ``adaptation_`` counterparts, ``adaptation_global_acceptance_history`` (per training
        round), ``n_energy_evaluations`` (and per phase), ``adaptation_seconds``,
        ``production_seconds``, ``n_training_steps``, ``n_skipped_training_steps``, the
        reweighted-ML options and ``adaptation_reweighted_ess_history`` (per training round),
        ``flow_sha256_production_start`` / ``flow_sha256_production_end`` (equal: frozen),
        ``n_nonfinite_proposals``, ``n_local_divergent``, the frozen MALA step sizes.

    Raises
    ------
    ValueError
        For invalid settings, without a model for a system that ships none, or when the energy
        or the flow density is not finite at the start.
    """
    if global_move not in GLOBAL_MOVES:
        raise ValueError(f"global_move must be one of {', '.join(GLOBAL_MOVES)}, got {global_move!r}")
    if n < 1 or n_chains < 1 or thin < 1 or local_steps < 0 or local_warmup < 0 or adapt_iterations < 0:
        raise ValueError("n, n_chains and thin must be >= 1; local_steps, local_warmup, adapt_iterations >= 0")
    if train_every < 1 or train_steps < 0 or batch_size < 1 or buffer_size < 1 or lr <= 0 or w_kl < 0:
        raise ValueError("train_every, batch_size, buffer_size must be >= 1, train_steps >= 0, lr > 0, w_kl >= 0")
    if production_proposals is None:
        production_proposals = n_proposals
    if global_move == "isir" and min(n_proposals, production_proposals) < 2:
        raise ValueError(f"i-SIR needs n_proposals >= 2 and production_proposals >= 2, got {n_proposals}, "
                         f"{production_proposals}")
    if not (w_reweighted >= 0 and reweighted_batch_size >= 1 and 0 < reweighted_power <= 1
            and 0 <= reweighted_clip < 1):
        raise ValueError("w_reweighted must be >= 0, reweighted_batch_size >= 1, reweighted_power in (0, 1] "
                         "and reweighted_clip in [0, 1)")
    reweighted = ({"w_reweighted": w_reweighted, "reweighted_batch_size": reweighted_batch_size,
                   "reweighted_power": reweighted_power, "reweighted_clip": reweighted_clip}
                  if w_reweighted > 0 else {})
    new = isinstance(model, str) and model == "new"
    if new and local_warmup < 1:
        raise ValueError("model='new' needs local_warmup >= 1: the new flow is fitted to the warmed-up chain states")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be positive, got {init_scale}")
    flow_options = dict(flow_options or {})
    flow, model_name = (None, "new flow") if new else resolve_model(system, model)

    n_chains = min(n_chains, n)
    per_chain = math.ceil(n / n_chains)
    production = per_chain * thin
    n_draws = 1 if global_move == "imh" else n_proposals - 1
    n_draws_production = 1 if global_move == "imh" else production_proposals - 1
    ckpt = Checkpoint(
        checkpoint,
        run={"system": system.name, "sampler": "adaptive", "n": n, "seed": seed, "model": model_name,
             "n_chains": n_chains, "global_move": global_move, "n_proposals": n_draws + 1,
             **({"production_proposals": production_proposals} if production_proposals != n_proposals else {}),
             "local_steps": local_steps, "local_step_size": local_step_size,
             "local_target_acceptance": local_target_acceptance, "local_warmup": local_warmup,
             "adapt_iterations": adapt_iterations, "train_every": train_every, "train_steps": train_steps,
             "batch_size": batch_size, "lr": lr, "w_kl": w_kl, "buffer_size": buffer_size, "thin": thin,
             "init_scale": init_scale, "flow_options": flow_options, "max_grad_norm": max_grad_norm,
             **reweighted},  # only when on: checkpoints of runs without the term stay resumable
        every_seconds=checkpoint_seconds,
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xADA]))
    adapter = DualAveraging(local_step_size, n_chains, local_target_acceptance)
    need_gradient = local_steps > 0 or local_warmup > 0
    counts = {k: 0 for k in ("global_adapt", "global", "local_adapt", "local", "nonfinite", "divergent",
                             "evals_adapt", "evals", "global_iters_adapt", "local_steps_adapt",
                             "train_steps", "skipped")}
    history: list[float] = []
    ess_history: list[float] = []
    seconds = {"adaptation": 0.0, "production": 0.0}

    def potential(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = system.energy.evaluate(xs, need_gradient=True)
        counts[phase_evals] += xs.shape[0]
        return result.energy, result.gradient

    def local(xs, us, gs, hs, adapting: bool):
        move = mala_step(potential, xs, us, gs, hs, rng)
        counts["local_adapt" if adapting else "local"] += int(move.accepted.sum())
        counts["divergent"] += move.n_divergent
        if adapting:
            adapter.update(move.accept_prob)
        return move.x, move.u, move.g

    stored = np.empty((per_chain, n_chains, system.dim))
    stored_u = np.empty((per_chain, n_chains))
    step = 0  # production iterations done
    resumed = ckpt.load()
    phase_evals = "evals_adapt"
    if resumed is not None:
        arrays, info = resumed
        if flow is None:
            if "flow_config" in info:  # the new flow's architecture (its circular dihedrals came from the states)
                flow = flow_from_config(info["flow_config"], system.topology)
                flow.config = info["flow_config"]
            else:
                flow = build_flow(system, **{"max_linear_std": None, **flow_options})
        _load_state(flow, arrays)
        x, h = arrays["x"], arrays["h"]
        restore_stored(arrays, stored, stored_u)
        step, counts, history, seconds = info["step"], info["counts"], info["history"], info["seconds"]
        ess_history = info.get("ess_history", [])
        rng.bit_generator.state = info["rng"]
        start = system.energy.evaluate(x, need_gradient=local_steps > 0)
        u, g = start.energy, start.gradient
    else:
        # ------------------------------------------------------------------ adaptation
        t0 = clock.monotonic()
        x = np.repeat(system.x0.numpy()[None], n_chains, axis=0).astype(np.float64)
        start = system.energy.evaluate(x, need_gradient=need_gradient)
        counts["evals_adapt"] += n_chains
        u, g = start.energy, start.gradient
        if not np.isfinite(u).all():
            raise ValueError(f"system '{system.name}': non-finite energy at the starting configuration")
        h = adapter.step_size
        bar = tqdm(total=local_warmup + adapt_iterations, desc=f"adaptive {system.name} (adapt)",
                   disable=not progress, unit="it")
        for _ in range(local_warmup):
            x, u, g = local(x, u, g, h, True)
            h = adapter.step_size
            counts["local_steps_adapt"] += 1
            bar.update(1)
        if new:
            flow = _new_flow(system, x, init_scale, flow_options, seed)
        q = _FlowEvaluator(flow, seed)
        log_w = _current_log_weights(u, q.log_prob(x))
        if not np.isfinite(log_w).all():
            raise ValueError(f"the flow's density is not finite at the starting configurations of '{system.name}'")
        parameters = [p for p in flow.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=lr) if parameters and train_steps > 0 else None
        generator = torch.Generator(device=q.device).manual_seed(
            int(np.random.SeedSequence([seed, 0x7EA]).generate_state(1)[0]))
        buffer = np.empty((max(min(buffer_size, adapt_iterations * n_chains), n_chains), system.dim))
        filled, head, round_accepted = 0, 0, 0
        for it in range(adapt_iterations):
            move = _global_move(system, q, global_move, n_draws, x, u, g if local_steps else None, log_w,
                                  it, local_steps > 0, rng)
            x, u, log_w = move.x, move.u, move.log_w
            g = move.g if local_steps else g
            counts["evals_adapt"] += move.n_energy_evaluations
            counts["nonfinite"] += move.n_nonfinite
            counts["global_adapt"] += int(move.taken.sum())
            counts["global_iters_adapt"] += 1
            round_accepted += int(move.taken.sum())
            for _ in range(local_steps):
                x, u, g = local(x, u, g, h, True)
                h = adapter.step_size
                counts["local_steps_adapt"] += 1
            # replay buffer (ring) of the most recent chain states
            rows = (head + np.arange(n_chains)) % buffer.shape[0]
            buffer[rows] = x
            head = (head + n_chains) % buffer.shape[0]
            filled = min(filled + n_chains, buffer.shape[0])
            if optimizer is not None and (it + 1) % train_every == 0:
                history.append(round_accepted / (train_every * n_chains))
                round_accepted = 0
                draws = None
                if w_reweighted > 0:
                    draws = reweighted_draws(system, flow, reweighted_batch_size, generator, reweighted_power,
                                             reweighted_clip)
                    counts["evals_adapt"] += reweighted_batch_size
                    ess_history.append(draws.relative_ess)
                _train(system, flow, optimizer, buffer[:filled], train_steps, batch_size, w_kl, max_grad_norm,
                       generator, counts, draws, w_reweighted)
                flow.eval()
                log_w = _current_log_weights(u, q.log_prob(x))
            elif local_steps:
                log_w = _current_log_weights(u, q.log_prob(x))
            bar.update(1)
            if (it + 1) % 10 == 0:
                bar.set_postfix(_short(counts, n_chains, local_steps, adapting=True))
        bar.close()
        h = adapter.final() if counts["local_steps_adapt"] else adapter.step_size
        flow.eval()
        seconds["adaptation"] = clock.monotonic() - t0
        if ckpt.path is not None:
            ckpt.save({"x": x, "h": h, "stored": stored[:0], "stored_u": stored_u[:0], **_state_arrays(flow)},
                      {"step": 0, "counts": counts, "history": history, "ess_history": ess_history, "seconds": seconds,
                       "rng": rng.bit_generator.state, **_config_info(flow, new)})

    # ---------------------------------------------------------------------- production
    phase_evals = "evals"
    t0 = clock.monotonic() - seconds["production"]
    q = _FlowEvaluator(flow, seed)
    hash_start = flow_hash(flow)
    log_w = _current_log_weights(u, q.log_prob(x))
    bar = tqdm(total=production, initial=step, desc=f"adaptive {system.name} (production)",
               disable=not progress, unit="it")
    while step < production:
        move = _global_move(system, q, global_move, n_draws_production, x, u, g if local_steps else None, log_w,
                              adapt_iterations + step, local_steps > 0, rng)
        x, u, log_w = move.x, move.u, move.log_w
        g = move.g if local_steps else g
        counts["evals"] += move.n_energy_evaluations
        counts["nonfinite"] += move.n_nonfinite
        counts["global"] += int(move.taken.sum())
        for _ in range(local_steps):
            x, u, g = local(x, u, g, h, False)
        if local_steps:
            log_w = _current_log_weights(u, q.log_prob(x))
        step += 1
        if step % thin == 0:
            stored[step // thin - 1] = x
            stored_u[step // thin - 1] = u
        if step % 10 == 0 or step == production:
            bar.update(step - bar.n)
            bar.set_postfix(_short(counts, n_chains, local_steps, adapting=False, done=step))
        if ckpt.due() or (step == production and ckpt.path is not None):
            seconds["production"] = clock.monotonic() - t0
            ckpt.save({"x": x, "h": h, "stored": stored[: step // thin], "stored_u": stored_u[: step // thin],
                       **_state_arrays(flow)},
                      {"step": step, "counts": counts, "history": history, "ess_history": ess_history, "seconds": seconds,
                       "rng": rng.bit_generator.state, **_config_info(flow, new)})
    bar.close()
    seconds["production"] = clock.monotonic() - t0
    hash_end = flow_hash(flow)
    if save_flow is not None:
        save_model(flow, save_flow, metadata={"sampler": "adaptive", "system": system.name, "seed": seed})

    global_iters = counts["global_iters_adapt"]
    adapt_local = counts["local_steps_adapt"]
    chain, time = chain_columns(n, n_chains, per_chain, thin)
    production_rate = counts["global"] / (production * n_chains)
    return SampleSet(
        x=stored.transpose(1, 0, 2).reshape(-1, system.dim)[:n],
        energies=stored_u.T.reshape(-1)[:n],
        chain=chain,
        time=time,
        metadata=run_metadata(
            system, "adaptive", seed, correlated=True, normalized_proposal=False, checkpoint=ckpt,
            model=model_name, global_move=global_move, n_chains=n_chains, thin=thin,
            **({"n_proposals": n_proposals, "production_proposals": production_proposals}
               if global_move == "isir" else {}),
            local_steps=local_steps, local_warmup=local_warmup, adapt_iterations=adapt_iterations,
            train_every=train_every, train_steps=train_steps, batch_size=batch_size, lr=lr, w_kl=w_kl,
            w_reweighted=w_reweighted,
            reweighted_batch_size=reweighted_batch_size if w_reweighted > 0 else None,
            reweighted_power=reweighted_power if w_reweighted > 0 else None,
            reweighted_clip=reweighted_clip if w_reweighted > 0 else None,
            adaptation_reweighted_ess_history=ess_history,
            buffer_size=buffer_size, init_scale=init_scale if new else None,
            acceptance_rate=production_rate,
            global_acceptance_rate=production_rate,
            local_acceptance_rate=counts["local"] / (production * n_chains * local_steps) if local_steps else None,
            adaptation_global_acceptance_rate=counts["global_adapt"] / max(global_iters * n_chains, 1),
            adaptation_local_acceptance_rate=counts["local_adapt"] / max(adapt_local * n_chains, 1)
            if adapt_local else None,
            adaptation_global_acceptance_history=history,
            n_energy_evaluations=counts["evals_adapt"] + counts["evals"],
            n_energy_evaluations_adaptation=counts["evals_adapt"],
            n_energy_evaluations_production=counts["evals"],
            adaptation_seconds=seconds["adaptation"],
            production_seconds=seconds["production"],
            n_training_steps=counts["train_steps"],
            n_skipped_training_steps=counts["skipped"],
            flow_sha256_production_start=hash_start,
            flow_sha256_production_end=hash_end,
            n_nonfinite_proposals=counts["nonfinite"],
            n_local_divergent=counts["divergent"],
            local_step_sizes=[float(v) for v in h] if local_steps else None,
            saved_flow=None if save_flow is None else str(Path(save_flow).resolve()),
        ),
    )



class ReweightedDraws(NamedTuple):
    """Fresh flow draws with self-normalised importance weights; see :func:`reweighted_draws`."""

    x: torch.Tensor
    weights: torch.Tensor
    relative_ess: float
    n_nonfinite: int


def reweighted_draws(
    system: System, flow: FlowDistribution, n: int, generator: torch.Generator, power: float = 1.0,
    clip: float = 0.0,
) -> ReweightedDraws:
    """``n`` draws ``x ~ q`` (no gradient) with weights ``w̄ ∝ (exp(−u(x) − log q(x)))^power``, clipped.

    Draws whose energy or flow density is not finite get zero weight (and are dropped). With
    ``clip > 0`` every log-weight above the ``1 − clip`` quantile of the finite ones is set to
    that quantile (applied after tempering). ``relative_ess`` is the Kish ESS / ``n`` of the raw
    weights (no tempering, no clipping): the flow-quality signal. The weights sum to 1 (all zero
    when no draw is finite).
    """
    with torch.no_grad():
        x, log_q = flow.sample(n, generator)
    energy = system.energy.evaluate(x.detach().cpu().to(torch.float64).numpy(), need_gradient=False).energy
    log_q = log_q.detach().cpu().to(torch.float64).numpy()
    valid = np.isfinite(energy) & np.isfinite(log_q)
    raw = -energy[valid] - log_q[valid]
    if raw.size == 0:
        return ReweightedDraws(x[:0], x.new_zeros(0), 0.0, n)
    log_w = power * raw
    if clip > 0:
        log_w = np.minimum(log_w, np.quantile(log_w, 1.0 - clip))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    r = np.exp(raw - raw.max())
    ess = float(r.sum() ** 2 / (r**2).sum() / n)
    keep = torch.as_tensor(np.flatnonzero(valid), device=x.device)
    return ReweightedDraws(x[keep].detach(), torch.as_tensor(w, dtype=x.dtype, device=x.device), ess,
                           int((~valid).sum()))


def _train(
    system: System, flow: FlowDistribution, optimizer: torch.optim.Optimizer, buffer: np.ndarray, steps: int,
    batch_size: int, w_kl: float, max_grad_norm: float, generator: torch.Generator, counts: dict[str, int],
    draws: ReweightedDraws | None = None, w_reweighted: float = 0.0,
) -> None:
    """``steps`` Adam steps on ``−mean log q`` of uniform buffer batches (+ ``w_kl`` · reverse KL)
    (+ ``w_reweighted`` · ``−Σ w̄ log q`` over the reweighted ``draws``, the whole set every step).

    Buffer states the flow cannot score (non-finite ``log q``) are left out of the batch; so are
    draws whose ``log q`` under the updated flow is not finite. A step whose loss or gradient is
    not finite is skipped and counted.
    """
    device, dtype = next(flow.buffers()).device, flow.base.dtype
    data = torch.as_tensor(buffer, dtype=dtype, device=device)
    use_draws = draws is not None and w_reweighted > 0 and draws.x.shape[0] > 0
    if use_draws:  # only draws with non-negligible weight contribute
        keep = draws.weights > 1e-12
        draw_x, draw_w = draws.x[keep], draws.weights[keep]
    flow.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator, device=device)
        log_q = flow.log_prob(data[idx])
        ok = torch.isfinite(log_q)
        loss = -log_q[ok].mean() if bool(ok.any()) else log_q.new_zeros(())
        if w_kl > 0:
            kl, _, _ = kl_loss(system, flow, batch_size, generator)
            counts["evals_adapt"] += batch_size
            loss = loss + w_kl * kl
        if use_draws:
            log_q_draws = flow.log_prob(draw_x)
            fine = torch.isfinite(log_q_draws)
            if bool(fine.any()):
                weights = draw_w[fine] / draw_w[fine].sum()
                loss = loss - w_reweighted * (weights * log_q_draws[fine]).sum()
        counts["train_steps"] += 1
        if not loss.requires_grad or not torch.isfinite(loss):
            counts["skipped"] += 1
            continue
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), max_grad_norm)
        if torch.isfinite(norm):
            optimizer.step()
        else:
            counts["skipped"] += 1


def _short(counts: dict[str, int], n_chains: int, local_steps: int, adapting: bool, done: int = 0) -> dict[str, str]:
    """Progress-bar acceptance rates of the current phase."""
    if adapting:
        rates = {"global": f"{counts['global_adapt'] / max(counts['global_iters_adapt'] * n_chains, 1):.2f}",
                 "local": f"{counts['local_adapt'] / max(counts['local_steps_adapt'] * n_chains, 1):.2f}"}
    else:
        rates = {"global": f"{counts['global'] / max(done * n_chains, 1):.2f}"}
        if local_steps:
            rates["local"] = f"{counts['local'] / max(done * n_chains * local_steps, 1):.2f}"
    return rates


__all__ = ["ReweightedDraws", "flow_hash", "reweighted_draws", "sample_adaptive"]
