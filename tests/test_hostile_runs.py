"""Runs that meet hostile conditions lose nothing: a second writer, a bad --out, Ctrl-C, kill -9, bad numbers.

Each defect of issue 17 ("no lost runs") has a case here: the command either refuses at once with one
line and exit status 2, or finishes with the same result as an undisturbed run.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import boltzflow.cli as cli
import boltzflow.flows.training as training
import boltzflow.samplers as samplers
from boltzflow import SampleSet, load_system, sample
from boltzflow.cli import main
from boltzflow.flows.continuous import load_continuous_flow
from boltzflow.flows.models import load_model
from boltzflow.flows.snf import load_snf
from boltzflow.flows.training import check_device, split_holdout
from boltzflow.io import InterruptGuard, RunFolderError, run_lock
from boltzflow.samplers.checkpoint import Checkpoint

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
PROGRESS = re.compile(rb"\| *(\d+)/\d+ \[")  # a tqdm line: steps done / total
SYSTEM = "double_well_2d"
MALA = ["--sampler", "mala", "--n", "8000", "--seed", "3"]  # 4500 MALA steps: 2-6 s
FLOW = ["--sampler", "flow", "--n", "30000", "--seed", "3"]  # 30 batches of flow draws: 1-4 s
TRAIN = ["--kind", "affine", "--layers", "2", "--hidden", "8", "--batch-size", "64", "--threads", "1",
         "--iterations", "1500", "--seed", "3"]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "boltzflow.cli", *args]


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


def _wait_for_progress(process: subprocess.Popen, timeout: float = 60.0) -> bytes:
    """Read the process's stderr until its progress bar has moved twice (so its loop has polled its checkpoint)."""
    seen, deadline = b"", time.monotonic() + timeout
    while len({int(done) for done in PROGRESS.findall(seen)} - {0}) < 2:
        assert time.monotonic() < deadline, f"no progress within {timeout} s: {seen[-500:]!r}"
        ready, _, _ = select.select([process.stderr], [], [], 0.5)
        if ready:
            chunk = os.read(process.stderr.fileno(), 65536)
            assert chunk, f"the run ended before it made progress: {seen[-500:]!r}"
            seen += chunk
    return seen


def _run(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(_command(*args), capture_output=True, text=True, env=ENV, timeout=timeout)


def _reference(sampler_args: list[str]) -> SampleSet:
    """The undisturbed run of ``sampler_args`` (in this process, no checkpoint)."""
    options = dict(zip(sampler_args[::2], sampler_args[1::2]))
    return sample(load_system(SYSTEM), sampler=options["--sampler"], n=int(options["--n"]),
                  seed=int(options["--seed"]), progress=False)


def _assert_same_samples(a: SampleSet, b: SampleSet) -> None:
    assert np.array_equal(a.x, b.x) and np.array_equal(a.energies, b.energies)
    assert np.array_equal(a.log_weights, b.log_weights)


# --- one writer per run folder -------------------------------------------------------------------------------


def test_a_second_run_into_the_same_folder_is_refused_at_once_and_the_first_is_intact(tmp_path):
    out = tmp_path / "run"
    first = _start("sample", SYSTEM, "--sampler", "mala", "--n", "30000", "--seed", "1", "--out", str(out),
                   "--quiet", "--no-plot")
    deadline = time.monotonic() + 60
    while not ((out / ".lock").exists() and (out / ".lock").read_text().strip() == str(first.pid)):
        assert time.monotonic() < deadline and first.poll() is None, "the first run never took its folder"
        time.sleep(0.05)
    second = _run("sample", SYSTEM, "--sampler", "mala", "--n", "30000", "--seed", "2", "--out", str(out),
                  "--quiet", "--no-plot")
    assert first.poll() is None, "the second run waited for the first instead of failing at once"
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0
    assert f"run folder {out} is in use by another boltzflow process (pid {first.pid})" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()[-2000:]
    result = SampleSet.load(out)
    assert len(result) == 30000 and result.metadata["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["samples.json", "samples.npz"]  # no lock, no checkpoint


@pytest.mark.parametrize("command", [
    ["sample", SYSTEM, "--n", "10"],
    ["train", SYSTEM, "--iterations", "5"],
    ["train", SYSTEM, "--snf", "--iterations", "5"],
    ["train", SYSTEM, "--lfep", "--data", "x", "--target-temperature", "2"],
    ["train-cnf", SYSTEM, "--iterations", "5"],
])
def test_every_writing_command_takes_the_folder_lock_before_any_work(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(cli, "load_system", lambda *a, **k: pytest.fail("work started in a locked folder"))
    with run_lock(tmp_path / "run"):
        assert main([*command, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"in use by another boltzflow process (pid {os.getpid()})" in err and err.count("\n") == 1


def test_the_lock_is_released_at_exit_and_a_folder_it_made_for_nothing_is_removed(tmp_path):
    out = tmp_path / "a" / "b"
    with run_lock(out) as folder:
        assert folder == out and (out / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match="in use"):
            with run_lock(out):
                pass
    assert not out.exists()
    with run_lock(out):
        (out / "result.txt").write_text("kept")
    assert [p.name for p in out.iterdir()] == ["result.txt"]
    with run_lock(out):  # a folder that holds results takes a lock again
        pass


# --- a bad --out fails before any work -----------------------------------------------------------------------


def _bad_out(tmp_path: Path, case: str) -> tuple[Path, str]:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    if case == "existing file":
        return blocker, "is a file, not a folder"
    if case == "below a file":
        return blocker / "run", "a part of its path is a file"
    if os.geteuid() == 0:  # root writes through permission bits: use a folder the kernel itself keeps read-only
        read_only = Path("/sys/kernel")
        if not read_only.is_dir():
            pytest.skip("running as root without a read-only /sys/kernel to stand for a read-only folder")
    else:
        read_only = tmp_path / "read-only"
        read_only.mkdir()
        read_only.chmod(0o555)
    if case == "into a read-only folder":
        return read_only / "run", "cannot create run folder"
    return read_only, "is not writable"


@pytest.mark.parametrize("case", ["existing file", "below a file", "into a read-only folder", "read-only folder"])
@pytest.mark.parametrize("command", [["sample", SYSTEM], ["train", SYSTEM], ["train-cnf", SYSTEM]])
def test_an_unusable_out_is_one_line_at_once(tmp_path, capsys, monkeypatch, case, command):
    out, message = _bad_out(tmp_path, case)
    monkeypatch.setattr(cli, "load_system", lambda *a, **k: pytest.fail("work started before --out was checked"))
    assert main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (tmp_path / "file.txt").read_text() == "not a folder"


# --- Ctrl-C writes a checkpoint; the rerun resumes to the undisturbed result -----------------------------------


@pytest.mark.parametrize("sampler_args", [
    pytest.param(MALA, id="mala-chains"),
    pytest.param(FLOW, id="flow-importance-draws", marks=pytest.mark.slow),  # the same mechanism, another loop
])
def test_ctrl_c_saves_a_checkpoint_and_the_rerun_gives_the_undisturbed_samples(tmp_path, sampler_args):
    out = tmp_path / "run"
    args = ["sample", SYSTEM, *sampler_args, "--out", str(out), "--no-plot"]
    process = _start(*args)
    _wait_for_progress(process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()[-2000:]
    assert f"progress is kept in {out / 'checkpoint.npz'}" in err.decode()
    assert (out / "checkpoint.npz").exists() and not (out / "samples.npz").exists()
    resumed = _run(*args, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not (out / "checkpoint.npz").exists()
    _assert_same_samples(SampleSet.load(out), _reference(sampler_args))


@pytest.mark.parametrize("command, model_file", [
    pytest.param(["train", SYSTEM, *TRAIN], "model.pt", id="train"),
    pytest.param(["train", SYSTEM, "--snf", *TRAIN], "snf.pt", id="train-snf"),
    pytest.param(["train-cnf", SYSTEM, "--hidden", "8", "--batch-size", "64", "--threads", "1", "--iterations", "1500",
                  "--sigma-f-iterations", "5", "--sigma-f-pairs", "64", "--seed", "3"], "cnf.pt", id="train-cnf"),
])
def test_ctrl_c_during_training_saves_a_checkpoint_and_the_rerun_trains_the_same_model(tmp_path, command, model_file):
    process = _start(*command, "--out", str(tmp_path / "interrupted"))
    _wait_for_progress(process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()[-2000:]
    assert (tmp_path / "interrupted" / "checkpoint.pt").exists()
    resumed = _run(*command, "--out", str(tmp_path / "interrupted"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert main([*command, "--out", str(tmp_path / "undisturbed"), "--quiet"]) == 0
    system = load_system(SYSTEM)
    load = {"model.pt": load_model, "snf.pt": load_snf, "cnf.pt": load_continuous_flow}[model_file]
    a = load(tmp_path / "interrupted" / model_file, system).state_dict()
    b = load(tmp_path / "undisturbed" / model_file, system).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_kill_9_leaves_no_stale_lock_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    long_mala = [*MALA[:-4], "--n", "40000", "--seed", "3"]  # long enough to be killed after its first snapshot
    args = ["sample", SYSTEM, *long_mala, "--out", str(out), "--no-plot", "-o", "checkpoint_seconds=0.1"]
    process = _start(*args)
    _wait_for_progress(process)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.npz").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.kill()
    process.communicate(timeout=60)
    assert (out / ".lock").exists()  # left behind by the dead process, but no longer locked
    resumed = _run(*args, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_samples(SampleSet.load(out), _reference(long_mala))


@pytest.mark.parametrize("command, patched", [
    (["sample", SYSTEM, "--sampler", "mala", "--n", "10"], (samplers, "sample")),
    (["train", SYSTEM, "--iterations", "5", "--layers", "1", "--hidden", "4"], (training, "train")),
])
def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(tmp_path, capsys, monkeypatch, command, patched):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(*patched, interrupted)
    assert main([*command, "--out", str(tmp_path / "run"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "nothing was saved yet" in err and "checkpoint" not in err.replace("first checkpoint", "")
    assert not (tmp_path / "run").exists()


def _interrupt_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # the Python-level handler runs at the next bytecode boundary


def test_the_interrupt_guard_defers_the_first_ctrl_c_and_raises_on_the_second():
    guard = InterruptGuard()
    guard.arm()
    try:
        _interrupt_self()
        assert guard.requested
        with pytest.raises(KeyboardInterrupt):
            _interrupt_self()
    finally:
        guard.disarm()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_interrupt_guard_lets_ctrl_c_through_once_its_function_has_returned():
    def run() -> InterruptGuard:
        guard = InterruptGuard()
        guard.arm()
        return guard

    guard = run()  # kept alive, as a traceback would keep it
    with pytest.raises(KeyboardInterrupt):
        _interrupt_self()
    assert not guard.requested and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_guard_left_behind_by_an_exception_does_not_block_the_next_one():
    def failing_loop() -> None:
        guard = InterruptGuard()
        guard.arm()
        raise RuntimeError("a failure inside the loop")

    try:
        failing_loop()
    except RuntimeError:
        kept = sys.exc_info()  # the traceback keeps the failed loop's guard alive, as a REPL would
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    guard = InterruptGuard()
    guard.arm()
    try:
        _interrupt_self()
        assert guard.requested
    finally:
        guard.disarm()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and kept


def test_the_interrupt_guard_stays_out_of_other_threads_and_other_handlers():
    guard = InterruptGuard()
    thread = threading.Thread(target=guard.arm)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def own(signum, frame):
        own.called = True

    previous = signal.signal(signal.SIGINT, own)
    try:
        guard.arm()
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_checkpoint_saves_then_stops_on_ctrl_c(tmp_path):
    ckpt = Checkpoint(tmp_path / "checkpoint.npz", run={"seed": 0}, every_seconds=3600)
    saved_at = None
    with pytest.raises(KeyboardInterrupt):
        for step in range(1000):
            if step == 10:
                _interrupt_self()
            if ckpt.due():
                saved_at = step
                ckpt.save({"x": np.full(3, step)}, {"step": step})
    arrays, info = ckpt.load()
    assert saved_at == 10 and info == {"step": 10} and arrays["x"].tolist() == [10, 10, 10]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- the same seed trains the same model ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["spline", "affine"])
def test_training_twice_with_one_seed_gives_identical_models(tmp_path, kind):
    common = ["train", SYSTEM, "--kind", kind, "--layers", "2", "--hidden", "8", "--iterations", "5",
              "--batch-size", "32", "--quiet", "--threads", "1"]
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert main([*common, "--seed", seed, "--out", str(tmp_path / name)]) == 0
    system = load_system(SYSTEM)
    a, b, c = (load_model(tmp_path / name / "model.pt", system).state_dict() for name in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- ordinary mistakes are one line and exit 2 ---------------------------------------------------------------

NO_CUDA = [] if torch.cuda.is_available() else [(["train", SYSTEM, "--device", "cuda"], "--device", "CUDA is not")]

BAD_ARGUMENTS = [
    (["sample", SYSTEM, "--n", "0"], "--n", "positive integer"),
    (["sample", SYSTEM, "--n", "-5"], "--n", "positive integer"),
    (["sample", SYSTEM, "--n", "many"], "--n", "positive integer"),
    (["sample", SYSTEM, "--temperature", "0"], "--temperature", "positive number"),
    (["sample", SYSTEM, "--temperature", "-300"], "--temperature", "positive number"),
    (["sample", SYSTEM, "--temperature", "nan"], "--temperature", "positive number"),
    (["sample", SYSTEM, "--workers", "0"], "--workers", "positive integer"),
    (["sample", SYSTEM, "--seed", "-1"], "--seed", "integer >= 0"),
    (["train", SYSTEM, "--holdout", "-0.1"], "--holdout", "fraction in [0, 1)"),
    (["train", SYSTEM, "--holdout", "1.5"], "--holdout", "fraction in [0, 1)"),
    (["train", SYSTEM, "--holdout", "1"], "--holdout", "fraction in [0, 1)"),
    (["train", SYSTEM, "--hidden", "0"], "--hidden", "positive integer"),
    (["train", SYSTEM, "--hidden", "16", "-4"], "--hidden", "positive integer"),
    (["train", SYSTEM, "--iterations", "0"], "--iterations", "positive integer"),
    (["train", SYSTEM, "--iterations", "-10"], "--iterations", "positive integer"),
    (["train", SYSTEM, "--batch-size", "0"], "--batch-size", "positive integer"),
    (["train", SYSTEM, "--layers", "-1"], "--layers", "integer >= 0"),
    (["train", SYSTEM, "--bins", "0"], "--bins", "positive integer"),
    (["train", SYSTEM, "--lr", "0"], "--lr", "positive number"),
    (["train", SYSTEM, "--lr=-1e-3"], "--lr", "positive number"),
    (["train", SYSTEM, "--lr", "inf"], "--lr", "positive number"),
    (["train", SYSTEM, "--lr-final=-1e-4"], "--lr-final", "number >= 0"),
    (["train", SYSTEM, "--w-kl", "-1"], "--w-kl", "number >= 0"),
    (["train", SYSTEM, "--threads", "0"], "--threads", "positive integer"),
    (["train", SYSTEM, "--device", "foo"], "--device", "unknown torch device 'foo'"),
    (["train", SYSTEM, "--device", "xla"], "--device", "not supported"),
    (["train", SYSTEM, "--snf", "--snf-steps", "0"], "--snf-steps", "positive integer"),
    (["train", SYSTEM, "--lfep", "--target-temperature", "0"], "--target-temperature", "positive number"),
    (["train-cnf", SYSTEM, "--iterations", "0"], "--iterations", "positive integer"),
    (["train-cnf", SYSTEM, "--ode-steps", "0"], "--ode-steps", "positive integer"),
    (["train-cnf", SYSTEM, "--sigma-b", "0"], "--sigma-b", "positive number"),
    (["train-cnf", SYSTEM, "--device", "foo"], "--device", "unknown torch device"),
    (["estimate", "run", "--n-bootstrap", "0"], "--n-bootstrap", "positive integer"),
    *NO_CUDA,
]


@pytest.mark.parametrize("argv, option, message", BAD_ARGUMENTS, ids=[" ".join(c[0][2:]) for c in BAD_ARGUMENTS])
def test_bad_numbers_and_devices_are_one_argparse_line(tmp_path, capsys, argv, option, message):
    out = [] if argv[0] == "estimate" else ["--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *out])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {option}" in errors[0] and message in errors[0]
    assert not (tmp_path / "run").exists()


def test_the_library_train_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="unknown torch device"):
        check_device("foo")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            training.train(load_system(SYSTEM), None, w_ml=0.0, w_kl=1.0, device="cuda")  # before the flow is used


def test_a_given_temperature_is_honoured(tmp_path):
    assert main(["sample", SYSTEM, "--sampler", "mala", "--n", "64", "--temperature", "2.5", "--out",
                 str(tmp_path / "run"), "--quiet", "--no-plot", "-o", "warmup=10"]) == 0
    assert SampleSet.load(tmp_path / "run").metadata["temperature"] == 2.5


def test_zero_layers_is_for_lfep_maps_only(tmp_path, capsys):
    assert main(["train", SYSTEM, "--layers", "0", "--out", str(tmp_path / "run")]) == 2
    assert "--layers 0 leaves a flow nothing to train" in capsys.readouterr().err
    assert main(["train", SYSTEM, "--layers", "1", "--hidden", "4", "--iterations", "3", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0


# --- training on independent samples holds out frames too ----------------------------------------------------


def test_train_on_a_flow_sampler_run_holds_out_independent_frames(tmp_path):
    assert main(["sample", SYSTEM, "--sampler", "flow", "--n", "2000", "--out", str(tmp_path / "flow"), "--quiet",
                 "--no-plot"]) == 0
    assert SampleSet.load(tmp_path / "flow").chain is None
    assert main(["train", SYSTEM, "--data", str(tmp_path / "flow"), "--layers", "1", "--hidden", "4",
                 "--iterations", "3", "--quiet", "--out", str(tmp_path / "model")]) == 0


def _frames(n: int, chain: np.ndarray | None = None, correlated: bool = False) -> SampleSet:
    return SampleSet(x=np.arange(2 * n, dtype=float).reshape(n, 2), energies=np.zeros(n), log_weights=np.zeros(n),
                     chain=chain, metadata={"correlated": correlated})


@pytest.mark.parametrize("data, held_rows", [
    (_frames(100), None),  # independent: a random tenth
    (_frames(100, correlated=True), list(range(90, 100))),  # one unlabelled chain: its last tenth
    (_frames(100, chain=np.repeat([0, 1], 50), correlated=True), [*range(45, 50), *range(95, 100)]),
])
def test_split_holdout(data, held_rows):
    kept, held = split_holdout(data, 0.1, seed=1)
    assert len(kept) == 90 and len(held) == 10
    rows = sorted(int(r) for r in held.x[:, 0] // 2)
    if held_rows is None:
        assert rows != list(range(90, 100)) and len(set(rows)) == 10
        assert np.array_equal(split_holdout(data, 0.1, seed=1)[1].x, held.x)  # deterministic for a seed
    else:
        assert rows == held_rows
