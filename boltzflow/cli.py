"""Command line: ``boltzflow systems | sample | train | train-cnf | estimate``.

Errors a user can fix (unknown system, bad option or number, unreadable run folder) print one line naming
the problem and exit with status 2, before any work. A command that writes a run folder (``--out``) holds
it for the whole run (:func:`~boltzflow.io.run_lock`): a second process writing there, a file in its place
or a read-only folder is refused at once. A Ctrl-C writes a checkpoint at the next safe point, exits 130
and says how to resume (or that nothing was saved yet).
Each command imports what it needs: ``estimate`` reads a system's declared observables and states
without building it, so it needs neither torch nor OpenMM.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .io import run_lock
from .samplers import SAMPLERS
from .samples import SampleSet
from .systems import DeclaredSystem, State, UnknownSystemError, declared_system, list_systems, load_system

if TYPE_CHECKING:
    from .systems import System


class CLIError(Exception):
    """A problem with the user's request, reported as one line."""


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["thin=500", "platform=CPU"]`` -> ``{"thin": 500, "platform": "CPU"}``."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"option '{pair}' must look like KEY=VALUE, e.g. thin=500")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return options


def _checked(convert: Callable[[str], Any], test: Callable[[Any], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` the text and check it, or one line saying what is required."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_non_negative_float = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
_fraction = _checked(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def _device(text: str) -> str:
    """An argparse ``type=`` for ``--device``: a torch device this machine has."""
    from .flows.training import check_device

    try:
        check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _cmd_systems(args: argparse.Namespace) -> int:
    infos = list_systems()
    if args.json:
        print(json.dumps([{**vars(i), "folder": str(i.folder)} for i in infos], indent=2))
        return 0
    rows = [("name", "dim", "temperature", "backend", "description")]
    for i in infos:
        temp = f"{i.temperature:g} K" if i.units.endswith("K") else f"kT={i.temperature:g}"
        rows.append((i.name, str(i.dim or "?"), temp, i.backend, i.description))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    return 0


def _refuse_overwrite(path: Path, force: bool) -> Path:
    """``path``, unless it exists and ``--force`` was not given (then a one-line CLI error)."""
    if path.exists() and not force:
        raise CLIError(f"{path} exists already; use --force to overwrite it or choose another --out")
    return path


def _interrupted(checkpoint: Path | None) -> int:
    """Say what a Ctrl-C left behind and how to go on; return the exit status 130."""
    if checkpoint is not None and checkpoint.exists():
        print(f"\ninterrupted: progress is kept in {checkpoint}; run the same command again to resume",
              file=sys.stderr)
    else:
        print("\ninterrupted before the first checkpoint: nothing was saved yet; run the same command again to "
              "start afresh", file=sys.stderr)
    return 130


def _train_and_save(fit: Callable[[], dict[str, Any]], save: Callable[[Path, dict[str, Any]], Any],
                    model_path: Path, checkpoint: Path | None, sample_args: str) -> int:
    """The tail of every training command: train, save the model with its metadata, drop the checkpoint.

    ``fit`` trains and returns the model's metadata; a Ctrl-C during it exits 130 and says whether a
    checkpoint was kept. ``sample_args`` completes the ``boltzflow sample`` line printed at the end.
    """
    try:
        metadata = fit()
    except KeyboardInterrupt:
        return _interrupted(checkpoint)
    save(model_path, metadata)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    print(f"wrote {model_path}; sample with: boltzflow sample {sample_args}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .samplers import sample

    out = Path(args.out)
    _refuse_overwrite(out / "samples.npz", args.force)
    system_options: dict[str, Any] = {}
    if args.platform:
        system_options["platform"] = args.platform
    if args.workers is not None:
        system_options["n_workers"] = args.workers
    if args.temperature is not None:
        system_options["temperature"] = args.temperature
    system = load_system(args.system, **system_options)
    options = _parse_options(args.option)
    sampler = args.sampler
    if sampler == "auto":
        sampler = "flow" if args.model or _has_shipped_model(system) else "md"
        if not args.quiet:
            print(f"sampler: {sampler}" + (" (shipped trained model)" if sampler == "flow" and not args.model else ""))
    if args.model:
        if "model" not in inspect.signature(SAMPLERS[sampler]).parameters:
            raise CLIError(f"--model is for the flow-based samplers, not '{sampler}'")
        options["model"] = args.model
    checkpoint = out / "checkpoint.npz"
    try:
        samples = sample(
            system, sampler=sampler, n=args.n, seed=args.seed,
            progress=not args.quiet, checkpoint=checkpoint, **options,
        )
    except KeyboardInterrupt:
        return _interrupted(checkpoint)
    except TypeError as err:
        raise CLIError(str(err)) from None
    written = [samples.save(out)]
    if system.topology is not None:
        written.append(samples.save_trajectory(out / "trajectory.dcd", system.topology))
        written.append(samples[:1].save_trajectory(out / "topology.pdb", system.topology))
    if not args.no_plot:
        from .plots import plot_samples

        written.append(plot_samples(samples, system, out / "overview.png"))
    checkpoint.unlink(missing_ok=True)
    print(f"{samples}; wrote {', '.join(str(p) for p in written)}")
    return 0


def _has_shipped_model(system: System) -> bool:
    from .reference_data import shipped_model
    from .systems.registry import is_builtin

    return is_builtin(system) and shipped_model(system.name) is not None


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .flows.models import build_flow, save_model
    from .flows.training import split_holdout, train

    if args.snf:
        return _cmd_train_snf(args)
    if args.lfep:
        return _cmd_train_lfep(args)
    if args.target_temperature is not None:
        raise CLIError("--target-temperature is for LFEP maps (--lfep)")
    if args.layers == 0:
        raise CLIError("--layers 0 leaves a flow nothing to train; give at least 1 (0 is for LFEP maps, --lfep)")
    out = Path(args.out)
    model_path = _refuse_overwrite(out / "model.pt", args.force)
    system = load_system(args.system)
    data_path = Path(args.data) if args.data else _default_data(args.system)
    data = SampleSet.load(data_path) if data_path is not None else None
    if data is None and args.w_kl == 0:
        raise CLIError(f"no training data for '{args.system}': give --data RUN_OR_NPZ or train by --w-kl > 0")
    if data is None and args.w_ml > 0:
        raise CLIError(f"no training data for '{args.system}': train by reverse KL alone (--w-ml 0 --w-kl 1) or "
                       "give --data RUN_OR_NPZ")
    weighting = args.data_weighting or (data.metadata.get("ml_weighting", "importance") if data else "importance")
    if args.threads:
        torch.set_num_threads(args.threads)
    validation = None
    if data is not None and args.w_ml > 0 and args.holdout > 0:
        data, validation = split_holdout(data, args.holdout, seed=args.seed)
    torch.manual_seed(args.seed)  # the couplings' initial weights
    flow = build_flow(system, kind=args.kind, n_layers=args.layers, hidden=tuple(args.hidden), num_bins=args.bins,
                      data=data)
    checkpoint = out / "checkpoint.pt"

    def fit() -> dict[str, Any]:
        history = train(
            system, flow, data=data, n_iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
            lr_final=args.lr_final, w_ml=args.w_ml, w_kl=args.w_kl, seed=args.seed, progress=not args.quiet,
            checkpoint=checkpoint, device=args.device, data_weighting=weighting, validation=validation,
        )
        return {"system": system.name, "data": None if data_path is None else str(data_path),
                "data_weighting": weighting, "iterations": args.iterations, "w_ml": args.w_ml,
                "w_kl": args.w_kl, "seed": args.seed, "final_loss": history.loss[-1] if history.loss else None,
                "best_iteration": history.best_iteration}

    return _train_and_save(fit, lambda path, metadata: save_model(flow, path, metadata), model_path, checkpoint,
                           f"{args.system} --sampler flow --model {model_path} --out RUN")


def _cmd_train_snf(args: argparse.Namespace) -> int:
    """``boltzflow train SYSTEM --snf``: build a stochastic normalizing flow and train it by reverse KL."""
    import torch

    from .flows.snf import build_snf, save_snf, train_snf

    if args.data or args.w_ml != 1.0 or args.w_kl != 0.0 or args.lr_final is not None or args.data_weighting:
        raise CLIError("--snf trains by reverse KL on the energy alone: --data, --w-ml, --w-kl, --lr-final and "
                       "--data-weighting do not apply")
    if args.device != "cpu":
        raise CLIError("SNF training runs on the CPU (its stochastic blocks evaluate the energy at every step)")
    out = Path(args.out)
    model_path = _refuse_overwrite(out / "snf.pt", args.force)
    system = load_system(args.system)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the couplings' initial weights
    snf = build_snf(system, kind=args.kind, n_layers=args.layers, n_blocks=args.snf_blocks, block=args.snf_block,
                    n_steps=args.snf_steps, step_size=args.snf_step_size, proposal_scale=args.snf_proposal_scale,
                    hidden=tuple(args.hidden), num_bins=args.bins)
    checkpoint = out / "checkpoint.pt"

    def fit() -> dict[str, Any]:
        history = train_snf(snf, n_iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            progress=not args.quiet, checkpoint=checkpoint)
        return {"system": system.name, "iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr,
                "seed": args.seed, "final_loss": history.loss[-1] if history.loss else None,
                "final_relative_ess": history.relative_ess[-1] if history.relative_ess else None}

    return _train_and_save(fit, lambda path, metadata: save_snf(snf, path, metadata), model_path, checkpoint,
                           f"{args.system} --sampler snf --model {model_path} --out RUN")


def _cmd_train_lfep(args: argparse.Namespace) -> int:
    """``boltzflow train CRYSTAL --lfep --data BASE --target-temperature T``: an LFEP map between temperatures."""
    import torch

    from .flows.lfep import build_temperature_map, save_lfep, train_lfep
    from .samplers.lfep import load_base_configurations

    if args.snf or args.w_kl != 0.0 or args.w_ml != 1.0 or args.data_weighting or args.device != "cpu":
        raise CLIError("--lfep trains by the energy-based KL on base samples: --snf, --w-ml, --w-kl, "
                       "--data-weighting and --device do not apply")
    if args.target_temperature is None or not args.data:
        raise CLIError("--lfep needs --data (decorrelated base-state samples, e.g. MD at the system temperature) "
                       "and --target-temperature")
    out = Path(args.out)
    model_path = _refuse_overwrite(out / "lfep.pt", args.force)
    system = load_system(args.system)
    if system.rigid_bodies is None or system.rigid_bodies.box is None:
        raise CLIError(f"'{args.system}' is not a periodic crystal of rigid molecules: --lfep needs one")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        frames = load_base_configurations(args.data, system.dim)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    base_t = system.temperature  # the base samples are the system at its own temperature (e.g. MD at 250 K)
    n_valid = int(round(len(frames) * args.holdout))
    train_x, valid_x = frames[: len(frames) - n_valid], frames[len(frames) - n_valid:]
    base = system.at_temperature(base_t)
    u_train = base.energy.evaluate(train_x, need_gradient=False).energy
    u_valid = base.energy.evaluate(valid_x, need_gradient=False).energy
    torch.manual_seed(args.seed)  # the couplings' initial weights
    flow = build_temperature_map(system.rigid_bodies, system.x0.numpy(), train_x, base_t, args.target_temperature,
                                 n_layers=args.layers, hidden=tuple(args.hidden), coupling=args.kind,
                                 num_bins=args.bins)
    validation = (valid_x, u_valid) if n_valid >= 2 else None

    def fit() -> dict[str, Any]:
        decay_to = None if args.lr_final is None else args.lr_final / args.lr
        history = train_lfep(flow, train_x, u_train, system.at_temperature(args.target_temperature).energy,
                             iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                             coupling_lr=args.lr / 30, decay_to=decay_to, seed=args.seed, validation=validation,
                             progress=not args.quiet)
        if history["ess"]:
            print(f"validation ({n_valid} held-out base samples): relative ESS {history['ess'][0]:.3f} (harmonic map) "
                  f"-> {history['ess'][-1]:.3f}; Δf estimate {history['delta_f'][-1]:.3f} kT")
        return {"system": system.name, "data": str(args.data), "n_train": len(train_x), "n_validation": n_valid,
                "iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                "validation_relative_ess": history["ess"], "validation_delta_f": history["delta_f"],
                "seconds": history["seconds"][0]}

    # LFEP training keeps no checkpoint: an interrupted run starts afresh
    return _train_and_save(fit, lambda path, metadata: save_lfep(flow, path, metadata), model_path, None,
                           f"{args.system} --sampler lfep --model {model_path} -o data=OTHER_BASE_SAMPLES --n N "
                           "--out RUN")


def _cmd_train_cnf(args: argparse.Namespace) -> int:
    """``boltzflow train-cnf SYSTEM``: a continuous flow by flow matching, then σ_F for flow perturbation."""
    import torch

    from .flows.continuous import build_continuous_flow, save_continuous_flow
    from .flows.continuous_training import train_continuous_flow, train_sigma_f

    out = Path(args.out)
    model_path = _refuse_overwrite(out / "cnf.pt", args.force)
    system = load_system(args.system)
    data_path = Path(args.data) if args.data else _default_data(args.system)
    if data_path is None:
        raise CLIError(f"no training data for '{args.system}': give --data RUN_OR_NPZ")
    data = SampleSet.load(data_path)
    weighting = args.data_weighting or data.metadata.get("ml_weighting", "importance")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the networks' initial weights
    flow = build_continuous_flow(
        system, hidden=tuple(args.hidden), time_features=args.time_features, n_steps=args.ode_steps,
        remove_centre=False if args.keep_centre else None, data=data, augment_rotations=args.augment_rotations,
        sigma_b=args.sigma_b, seed=args.seed, internal_coordinates=args.internal_coordinates,
    )
    checkpoint = out / "checkpoint.pt"

    def fit() -> dict[str, Any]:
        history = train_continuous_flow(
            system, flow, data, n_iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
            lr_final=args.lr_final, seed=args.seed, augment_rotations=args.augment_rotations,
            data_weighting=weighting, progress=not args.quiet, checkpoint=checkpoint, device=args.device,
        )
        sigma_f_loss = train_sigma_f(flow, n_pairs=args.sigma_f_pairs, n_iterations=args.sigma_f_iterations,
                                     seed=args.seed, progress=not args.quiet)
        return {"system": system.name, "data": str(data_path), "data_weighting": weighting,
                "iterations": args.iterations, "seed": args.seed,
                "final_loss": history.loss[-1] if history.loss else None,
                "sigma_f_final_loss": sigma_f_loss[-1] if sigma_f_loss else None,
                "training_seconds": history.seconds}

    return _train_and_save(fit, lambda path, metadata: save_continuous_flow(flow.cpu(), path, metadata), model_path,
                           checkpoint, f"{args.system} --sampler fp-smc --model {model_path} --out RUN")


def _default_data(system_name: str) -> Path | None:
    """The project's training set (``data/<name>/training``), else its reference samples (``data/<name>``)."""
    folder = Path(__file__).resolve().parents[1] / "data" / system_name
    for candidate in (folder / "training", folder):
        if (candidate / "samples.npz").exists():
            return candidate
    return None


def _system_for(samples: SampleSet) -> DeclaredSystem | System | None:
    """The system that produced the samples, if it can be found, for its observables and states.

    Read from its definition where that declares them all (no energy is built), else built. The
    folder recorded in the metadata (``system_source``) comes first, then the system's name (a
    built-in name means the built-in system). A system that is found but whose definition is
    broken (an observable out of range, a state that does not parse) is an error, not a missing system.
    """
    source, name = samples.metadata.get("system_source"), samples.metadata.get("system")
    refs: list[str | Path] = [Path(source)] if isinstance(source, str) and Path(source).is_dir() else []
    refs += [name] if isinstance(name, str) and name else []
    for ref in refs:
        try:
            return declared_system(ref) or load_system(ref)
        except (UnknownSystemError, FileNotFoundError):
            continue
    return None


def _reference_for(system: DeclaredSystem | System | None, temperature: float | None) -> dict[str, Any] | None:
    """The project's reference estimates for samples of a built-in system at its own temperature, else None."""
    from .reference_data import reference_estimates
    from .systems.registry import is_builtin

    if system is None or not is_builtin(system) or temperature is None:
        return None
    if abs(float(temperature) - system.temperature) > 1e-9 * system.temperature:
        return None
    return reference_estimates(system.name)


def _cmd_estimate(args: argparse.Namespace) -> int:
    from .estimate.report import format_comparison, format_table, reference_comparison, summarize

    samples = SampleSet.load(args.run)
    system = _system_for(samples)
    observables = dict(system.observables) if system is not None else {}
    states = None
    if args.state_a or args.state_b:
        if not (args.state_a and args.state_b):
            raise CLIError("give both --state-a and --state-b")
        states = (State(args.state_a, observables), State(args.state_b, observables))
    elif system is not None and {"A", "B"} <= set(system.states):
        states = (system.states["A"], system.states["B"])
    summary = summarize(samples, observables=observables, states=states, seed=args.seed, error=args.error,
                        n_bootstrap=args.n_bootstrap, system=system)
    meta = samples.metadata
    summary["run"] = {k: meta.get(k) for k in ("system", "sampler", "temperature", "seed")}
    custom_states = bool(args.state_a or args.state_b)
    reference = None if custom_states else _reference_for(system, samples.metadata.get("temperature"))
    if reference:
        summary["reference"] = reference_comparison(summary, reference)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(" | ".join(f"{k} {v}" for k, v in summary["run"].items() if v is not None))
        print(format_table(summary))
        if summary.get("reference"):
            print("\nagainst the project's reference (data/reference.json):")
            print(format_comparison(summary["reference"]))
    if args.plot:
        from .plots import plot_samples

        print(f"wrote {plot_samples(samples, system, Path(args.plot))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``boltzflow`` argument parser."""
    parser = argparse.ArgumentParser(prog="boltzflow", description="Boltzmann sampling with flows, MCMC and MD.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("systems", help="list the built-in systems")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_systems)

    p = sub.add_parser("sample", help="draw samples and save them to a run folder")
    p.add_argument("system", help="built-in system name or path to a system folder")
    p.add_argument("--sampler", default="auto", choices=["auto", *sorted(SAMPLERS)],
                   help="sampler; auto (default): flow with the shipped trained model if the system has one, else md")
    p.add_argument("--n", type=_positive_int, default=10_000, help="number of samples (default: 10000)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, help="run folder for samples, trajectory, plot and checkpoint")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler option, repeatable (e.g. -o thin=500 -o timestep_fs=1.0)")
    p.add_argument("--model", help="trained flow model file (flow, imh, isir, neutra; default: the shipped one), "
                                   "or an SNF file from `train --snf` (snf), or a continuous flow from `train-cnf` "
                                   "(cnf-exact, cnf-hutchinson, fp, fp-is, fp-smc)")
    p.add_argument("--platform", help="OpenMM platform: auto, Reference, CPU, CUDA, OpenCL")
    p.add_argument("--workers", type=_positive_int, help="OpenMM energy worker processes")
    p.add_argument("--temperature", type=_positive_float, help="override the system temperature (K or reduced)")
    p.add_argument("--force", action="store_true", help="overwrite existing samples in --out")
    p.add_argument("--no-plot", action="store_true", help="do not write overview.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_sample)

    p = sub.add_parser("train", help="train a normalizing flow for a system")
    p.add_argument("system", help="built-in system name or path to a system folder")
    p.add_argument("--data", help="training samples (run folder or .npz); default: the project's "
                                   "data/<system>/training, else data/<system>")
    p.add_argument("--out", required=True, help="run folder for model.pt and the training checkpoint")
    p.add_argument("--kind", default="spline", choices=["spline", "affine"], help="coupling layers (default: spline)")
    p.add_argument("--layers", type=_non_negative_int, default=6, help="coupling layers (default: 6)")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=[64, 64], help="conditioner hidden sizes")
    p.add_argument("--bins", type=_positive_int, default=8, help="spline bins (default: 8)")
    p.add_argument("--iterations", type=_positive_int, default=2000, help="optimiser steps (default: 2000)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="batch size (default: 256)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--lr-final", type=_non_negative_float,
                   help="cosine-decay the learning rate to this value (default: constant)")
    p.add_argument("--data-weighting", choices=["importance", "uniform"],
                   help="draw ML batches by the data's importance weights or uniformly (for a training mixture); "
                        "default: the data's own 'ml_weighting' metadata, else importance")
    p.add_argument("--w-ml", type=_non_negative_float, default=1.0,
                   help="weight of maximum likelihood on data (default: 1)")
    p.add_argument("--w-kl", type=_non_negative_float, default=0.0,
                   help="weight of reverse KL on the energy (default: 0)")
    p.add_argument("--holdout", type=_fraction, default=0.1,
                   help="share of each data chain held out to stop at the best held-out likelihood (default: 0.1; "
                        "0 disables)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device: cpu or cuda[:N] (default: cpu)")
    p.add_argument("--threads", type=_positive_int,
                   help="torch CPU threads (1 is fastest for small flows on a busy machine)")
    p.add_argument("--force", action="store_true", help="overwrite an existing model in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--snf", action="store_true",
                   help="train a stochastic normalizing flow instead (toy systems; reverse KL; writes OUT/snf.pt): "
                        "the --layers couplings interleaved with --snf-blocks stochastic blocks at λ = 1/K, ..., 1")
    p.add_argument("--lfep", action="store_true",
                   help="train a learned free-energy perturbation map of a crystal instead (writes OUT/lfep.pt): "
                        "--data are base-state samples, --target-temperature the other state; --lr is the rate of "
                        "the per-coordinate scale (try 3e-3), couplings learn at --lr/30; --kind, --layers (try 0), "
                        "--hidden, --bins shape the couplings; --holdout samples validate it")
    p.add_argument("--target-temperature", type=_positive_float, help="LFEP: target temperature (K)")
    p.add_argument("--snf-blocks", type=_non_negative_int, default=2,
                   help="SNF: stochastic blocks K (default: 2; 0: a plain flow)")
    p.add_argument("--snf-block", default="metropolis", choices=["metropolis", "langevin"],
                   help="SNF: block type (default: metropolis)")
    p.add_argument("--snf-steps", type=_positive_int, default=10, help="SNF: steps per block (default: 10)")
    p.add_argument("--snf-step-size", type=_positive_float, default=0.01, help="SNF: Langevin step ε (default: 0.01)")
    p.add_argument("--snf-proposal-scale", type=_positive_float, default=0.3,
                   help="SNF: Metropolis proposal standard deviation (default: 0.3)")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("train-cnf", help="train a continuous flow (flow matching) and its flow-perturbation sigma_F")
    p.add_argument("system", help="built-in system name or path to a system folder")
    p.add_argument("--data", help="training samples (run folder or .npz); default: the project's "
                                   "data/<system>/training, else data/<system>")
    p.add_argument("--out", required=True, help="run folder for cnf.pt and the training checkpoint")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=[256, 256, 256],
                   help="velocity MLP hidden sizes")
    p.add_argument("--time-features", type=_non_negative_int, default=8,
                   help="frequencies of the time embedding (default: 8)")
    p.add_argument("--ode-steps", type=_positive_int, default=20, help="RK4 steps of each map (default: 20)")
    p.add_argument("--iterations", type=_positive_int, default=5000, help="flow-matching steps (default: 5000)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="batch size (default: 256)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--lr-final", type=_non_negative_float,
                   help="cosine-decay the learning rate to this value (default: constant)")
    p.add_argument("--data-weighting", choices=["importance", "uniform"],
                   help="draw batches by the data's importance weights or uniformly; default: the data's own "
                        "'ml_weighting' metadata, else importance")
    p.add_argument("--augment-rotations", action="store_true",
                   help="rotate every training frame at random about its centre (particles and molecules)")
    p.add_argument("--internal-coordinates", action="store_true",
                   help="model a molecule's bonds, angles and dihedrals instead of Cartesian coordinates")
    p.add_argument("--keep-centre", action="store_true",
                   help="model the centre of mass too (default: removed for particles and molecules)")
    p.add_argument("--sigma-b", type=_positive_float, default=1e-3,
                   help="flow perturbation's sigma_B in system length units (default: 1e-3)")
    p.add_argument("--sigma-f-iterations", type=_non_negative_int, default=1000,
                   help="sigma_F training steps (default: 1000)")
    p.add_argument("--sigma-f-pairs", type=_positive_int, default=4096, help="sigma_F training pairs (default: 4096)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device: cpu or cuda[:N] (default: cpu)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--force", action="store_true", help="overwrite an existing model in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train_cnf)

    p = sub.add_parser("estimate", help="estimates with uncertainties from a run folder")
    p.add_argument("run", help="run folder or samples .npz file")
    p.add_argument("--state-a", help="state A for ΔF, e.g. 'phi < 0' (default: the system's state A)")
    p.add_argument("--state-b", help="state B for ΔF, e.g. 'phi > 0' (default: the system's state B)")
    p.add_argument("--error", default="analytic", choices=["analytic", "bootstrap"],
                   help="error bars of independent samples: delta method (default, fast) or bootstrap")
    p.add_argument("--n-bootstrap", type=_positive_int, default=200, help="bootstrap resamples with --error bootstrap")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="bootstrap seed")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", help="also write histograms of the observables to this PNG file")
    p.set_defaults(handler=_cmd_estimate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``boltzflow`` console script."""
    args = build_parser().parse_args(argv)
    out = getattr(args, "out", None)
    try:
        with run_lock(out) if out is not None else nullcontext():  # held before any work, released at exit
            return args.handler(args)
    except KeyboardInterrupt:  # outside a run (e.g. while a system is built): nothing to keep
        print(f"\nboltzflow {args.command}: interrupted", file=sys.stderr)
        return 130
    # ValueError covers the bad-file errors: SampleSetError, CheckpointError, ModelFileError, TrainingCheckpointError,
    # RunFolderError
    except (CLIError, UnknownSystemError, FileNotFoundError, ValueError) as err:
        print(f"boltzflow {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
