"""Hostile conditions for energy evaluation: a parent killed with SIGKILL, a worker stopped with
SIGSTOP, a user energy function that raises on some (or all) rows, worker options on toy systems."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import openmm
import pytest
import torch

import boltzflow as bf
from boltzflow.energy.function import EnergyFunctionError, FunctionEnergy
from boltzflow.energy.openmm_bridge import OpenMMEnergy, WorkerError, WorkerPool
from boltzflow.samples import SampleSet

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

ROOT = Path(__file__).resolve().parents[1]

_SMALL_SYSTEM = """
import numpy as np
import openmm


def small_system(n: int = 4) -> openmm.System:
    system = openmm.System()
    bonds, nonbonded = openmm.HarmonicBondForce(), openmm.NonbondedForce()
    for i in range(n):
        system.addParticle(12.0)
        nonbonded.addParticle(0.1 * (-1) ** i, 0.3, 0.5)
    for i in range(n - 1):
        bonds.addBond(i, i + 1, 0.15, 1000.0)
    system.addForce(bonds)
    system.addForce(nonbonded)
    return system


def configurations(n_rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chain = np.arange(4)[:, None] * np.array([0.15, 0.0, 0.0])
    return (chain[None] + 0.01 * rng.standard_normal((n_rows, 4, 3))).reshape(n_rows, -1)
"""
namespace: dict = {}
exec(_SMALL_SYSTEM, namespace)  # the same code runs in the parent-process script below
small_system, configurations = namespace["small_system"], namespace["configurations"]


def state(pid: int) -> str | None:
    """The process's state letter from /proc, or ``None`` if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    return state(pid) not in (None, "Z", "X")


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], within: float) -> float:
    """Seconds until none of ``pids`` is alive (``inf`` if some still are after ``within`` s)."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if not any(alive(pid) for pid in pids):
            return time.monotonic() - start
        time.sleep(0.02)
    return float("inf")


# ---------------------------------------------------------------------- parent killed with SIGKILL
_PARENT = _SMALL_SYSTEM + """
import sys
import threading

from boltzflow.energy.openmm_bridge import OpenMMEnergy

if __name__ == "__main__":
    energy = OpenMMEnergy(small_system(), 300.0, platform="Reference", n_workers=2)
    x = configurations(600_000)
    if sys.argv[1] == "thread":  # started by a thread that then ends: no PR_SET_PDEATHSIG
        starter = threading.Thread(target=energy.evaluate, args=(x[:10],))
        starter.start()
        starter.join()
    else:
        energy.evaluate(x[:10])
    print(" ".join(map(str, energy.worker_pool.pids)), flush=True)
    energy.evaluate(x[:10])  # the workers outlived the starting thread
    assert energy.worker_pool.n_restarts == 0
    print("batch", flush=True)
    while True:
        energy.evaluate(x, need_gradient=False)
"""


@pytest.mark.parametrize("started_by", ["main", "thread"])
def test_workers_and_tracker_exit_when_parent_is_killed_mid_batch(tmp_path, started_by):
    """SIGKILL of the parent during a long batch: workers (and multiprocessing's resource tracker) exit within 2 s.

    ``main``: Linux's parent-death signal; ``thread``: the portable watchdog on the parent's pipe.
    """
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), started_by], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else "no pids"
        assert proc.stdout.readline().strip() == "batch"
        time.sleep(0.5)  # inside the ~5 s batch: both workers are computing
        descendants = children(proc.pid)
        assert set(workers) <= set(descendants) and all(alive(pid) for pid in workers)
        assert len(descendants) == 3  # the two workers and multiprocessing's resource tracker
        proc.kill()
        proc.wait(5)
        elapsed = wait_gone(descendants, within=10.0)
    finally:
        proc.kill()
        proc.communicate()
    assert elapsed < 2.0, f"orphans still alive: {[p for p in descendants if alive(p)]}"


# ---------------------------------------------------------------------- a worker stopped with SIGSTOP
@pytest.fixture(scope="module")
def stoppable():
    energy = OpenMMEnergy(small_system(), 300.0, platform="Reference", n_workers=2, worker_timeout=2.0)
    yield energy
    energy.close()


@pytest.mark.parametrize(
    "n_rows, when",
    [(40, "before"), (40_000, "before"), (300_000, "during")],
    ids=["small-batch", "chunk-larger-than-pipe-buffer", "mid-batch"],
)
def test_stopped_worker_is_killed_replaced_and_its_chunk_redone(stoppable, n_rows, when):
    x = configurations(n_rows, seed=1)
    reference = stoppable.evaluate(x, need_gradient=n_rows < 100_000)  # an unstopped run
    pool = stoppable.worker_pool
    victim, other = pool.pids
    failed_before, timeouts, restarts = stoppable.n_failed, pool.n_timeouts, pool.n_restarts
    if when == "before":
        os.kill(victim, signal.SIGSTOP)
    else:
        threading.Timer(0.1, os.kill, args=(victim, signal.SIGSTOP)).start()
    start = time.monotonic()
    result = stoppable.evaluate(x, need_gradient=n_rows < 100_000)
    elapsed = time.monotonic() - start
    try:
        assert np.array_equal(result.energy, reference.energy)
        if reference.gradient is not None:
            assert np.array_equal(result.gradient, reference.gradient)
        assert stoppable.n_failed == failed_before and result.n_failed == 0
        assert pool.n_timeouts == timeouts + 1 and pool.n_restarts == restarts + 1
        assert pool.pids[1] == other and pool.pids[0] != victim
        assert not alive(victim)
        assert elapsed < pool.timeout + 8.0, elapsed
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGKILL)


@pytest.mark.parametrize("failure", ["no-retries", "replacement-hangs"])
def test_unrecoverable_hang_raises_a_clear_error(failure):
    xml = openmm.XmlSerializer.serialize(small_system())
    pool = WorkerPool(xml, "Reference", {}, n_workers=1, timeout=1.0, max_retries=0 if failure == "no-retries" else 2)
    x = configurations(40)
    try:
        pool.evaluate(x, need_forces=False)
        (pid,) = pool.pids
        if failure == "replacement-hangs":
            pool.start_timeout = 1e-3  # no fresh worker can report ready that fast
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        message = "did not answer for 1 s" if failure == "no-retries" else "did not report ready"
        with pytest.raises(WorkerError, match=message):
            pool.evaluate(x, need_forces=False)
        assert time.monotonic() - start < 6.0
        assert pool.pids == [None] and not alive(pid)  # every worker stopped after the error
    finally:
        pool.close(graceful=False)


# ---------------------------------------------------------------------- user functions that raise
def raising_torch(x: torch.Tensor) -> torch.Tensor:
    if (x[:, 0] > 1).any():
        raise ValueError("x[0] > 1 is outside the model")
    return 0.5 * (x**2).sum(-1)


def raising_numpy(x: np.ndarray) -> np.ndarray:
    if (x[:, 0] > 1).any():
        raise ValueError("x[0] > 1 is outside the model")
    return 0.5 * (x**2).sum(-1)


def numpy_gradient(x: np.ndarray) -> np.ndarray:
    if (x[:, 0] > 1).any():
        raise ValueError("x[0] > 1 is outside the model")
    return x.copy()


@pytest.mark.parametrize("kind", ["torch", "numpy"])
@pytest.mark.parametrize("n_rows", [1, 7, 64, 1000])
def test_only_raising_rows_are_failed(kind, n_rows):
    calls = []

    def counted(x):
        calls.append(len(x))
        return raising_torch(x) if kind == "torch" else raising_numpy(x)

    energy = FunctionEnergy(counted, dim=3, kT=2.0, gradient=numpy_gradient if kind == "numpy" else None)
    energy.evaluate(np.zeros((1, 3)))  # the function has succeeded once
    x = np.random.default_rng(n_rows).normal(size=(n_rows, 3))
    bad = x[:, 0] > 1
    calls.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = energy.evaluate(x)
    assert result.n_failed == bad.sum()
    assert np.isinf(result.energy[bad]).all() and (result.gradient[bad] == 0).all()
    np.testing.assert_allclose(result.energy[~bad], 0.25 * (x[~bad] ** 2).sum(-1))
    np.testing.assert_allclose(result.gradient[~bad], 0.5 * x[~bad])
    if bad.any():
        assert len(caught) == 1 and "raised on" in str(caught[0].message) and "counted" in str(caught[0].message)
        if bad.sum() == 1:  # bisection: about 2 log2(B) calls, not B
            assert len(calls) <= 2 * np.log2(n_rows) + 1
    samples = SampleSet(x=x, energies=result.energy)
    assert samples.n_failed == bad.sum()


def test_mala_runs_through_a_function_that_raises_on_some_rows():
    system = bf.System.from_energy(raising_torch, dim=2, x0=[0.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = bf.sample(system, sampler="mala", n=400, seed=0, n_chains=8, warmup=100, progress=False)
    assert len(samples) == 400 and samples.n_failed == 0  # +inf proposals are never accepted
    assert (samples.x[:, 0] <= 1).all()
    assert system.energy.n_failed > 0  # the raising proposals were counted


@pytest.mark.parametrize("rows", [1, 5])
def test_function_raising_on_every_row_is_a_clear_error(rows):
    def broken(x):
        return x.nonexistent_method()

    energy = FunctionEnergy(broken, dim=2)
    with pytest.raises(EnergyFunctionError, match=r"energy function .*broken raised on every one") as info:
        energy.evaluate(np.zeros((rows, 2)))
    assert isinstance(info.value.__cause__, AttributeError)
    system = bf.System.from_energy(broken, dim=2)
    with pytest.raises(EnergyFunctionError, match="broken"):
        bf.sample(system, sampler="mala", n=10, seed=0, progress=False)


def test_all_rows_raising_after_a_success_are_failed_rows():
    energy = FunctionEnergy(raising_torch, dim=2)
    energy.evaluate(np.zeros((2, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = energy.evaluate(np.full((3, 2), 2.0))
    assert result.n_failed == 3 and np.isinf(result.energy).all()


@pytest.mark.parametrize(
    "fn, gradient, message",
    [
        (lambda x: x.sum(), None, "returned 1 values for a batch of 4"),
        (lambda x: [1.0, 2.0], None, "returned a list, not a tensor"),
        (lambda x: x.sum(-1), lambda x: x[:, :1], "gradient of .* has shape"),
    ],
    ids=["wrong-length", "not-a-tensor", "wrong-gradient-shape"],
)
def test_wrong_output_shape_is_an_error_naming_the_function(fn, gradient, message):
    energy = FunctionEnergy(fn, dim=2, gradient=gradient)
    with pytest.raises((ValueError, TypeError), match=message) as info:
        energy.evaluate(np.ones((4, 2)))
    assert "<lambda>" in str(info.value)


# ---------------------------------------------------------------------- worker options on toy systems
@pytest.mark.parametrize("name", ["double_well_2d", "lj13", "gmm10", "four_wells_2d"])
@pytest.mark.parametrize("options", [{"n_workers": 2}, {"platform": "CPU"}])
def test_openmm_options_on_a_toy_system_are_a_value_error(name, options):
    with pytest.raises(ValueError, match=f"'{name}' is not an OpenMM system: platform/n_workers do not apply"):
        bf.load_system(name, **options)


@pytest.mark.parametrize("flag", [["--workers", "2"], ["--platform", "CPU"]])
def test_cli_reports_openmm_options_on_a_toy_system_without_a_traceback(tmp_path, flag, capsys):
    from boltzflow.cli import main

    assert main(["sample", "double_well_2d", "--n", "10", "--out", str(tmp_path / "run"), *flag]) == 2
    err = capsys.readouterr().err
    assert "is not an OpenMM system" in err and "Traceback" not in err
