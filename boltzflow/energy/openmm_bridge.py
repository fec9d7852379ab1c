"""OpenMM bridge: reduced energies ``u = U / kT`` and gradients of an ``openmm.System``.

Positions are in nm and energies in kJ/mol at the OpenMM boundary; :class:`OpenMMEnergy` returns
``u = U / (R T)`` and ``du/dx = -F / (R T)`` with ``R`` the molar gas constant in kJ/mol/K.

Evaluation runs either in the calling process (one Context) or in a pool of spawned worker
processes, each with its own Context, that receive one contiguous chunk of the batch per call as
raw float64 bytes (no per-configuration pickling). Workers ignore SIGINT, are replaced when they
die (their chunk is redone) and are shut down by :meth:`OpenMMEnergy.close`, a context manager,
garbage collection or interpreter exit.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import numpy as np
import openmm
import openmm.unit as unit

from .base import Energy
from .openmm_worker import ContextEvaluator, create_context, worker_main

R_KJ_PER_MOL_K: float = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
"""Molar gas constant ``k_B N_A`` in kJ/mol/K."""

PLATFORMS = ("Reference", "CPU", "CUDA", "OpenCL")
"""Platform names accepted by :class:`OpenMMEnergy` besides ``"auto"``."""

AUTO_CANDIDATES = ("Reference", "CPU", "CUDA")
"""Platforms timed by :func:`select_platform`."""

_PLATFORM_CACHE: dict[tuple, str] = {}


class WorkerError(RuntimeError):
    """A worker process failed to start, raised unexpectedly, or died repeatedly on the same chunk."""


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms usable in this installation."""
    return [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]


def n_cores() -> int:
    """CPU cores available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_properties(
    platform_name: str, requested: dict | None, n_workers: int, strict: bool = True
) -> dict[str, str]:
    """Platform properties for one Context among ``n_workers``.

    The CPU platform gets ``Threads = max(1, cores // n_workers)`` unless ``requested`` sets it.

    Parameters
    ----------
    platform_name : str
        OpenMM platform name.
    requested : dict, optional
        User properties.
    n_workers : int
        Number of Contexts that run at the same time.
    strict : bool
        Raise for properties the platform does not know; when false they are dropped (used when
        the platform was chosen automatically).

    Returns
    -------
    dict[str, str]
    """
    known = set(openmm.Platform.getPlatformByName(platform_name).getPropertyNames())
    properties = {str(k): str(v) for k, v in (requested or {}).items()}
    unknown = sorted(set(properties) - known)
    if unknown and strict:
        raise ValueError(f"platform {platform_name} has no properties {unknown}; it has {sorted(known)}")
    properties = {k: v for k, v in properties.items() if k in known}
    if platform_name == "CPU" and "Threads" not in properties:
        properties["Threads"] = str(max(1, n_cores() // max(1, n_workers)))
    return properties


def _probe_positions(system: openmm.System) -> np.ndarray:
    """``(n, 3)`` positions (nm) on a cubic lattice at liquid-like density, for timing only."""
    n = system.getNumParticles()
    per_side = int(np.ceil(n ** (1 / 3)))
    if system.usesPeriodicBoundaryConditions():
        box = system.getDefaultPeriodicBoxVectors()
        spacing = np.array([box[i][i].value_in_unit(unit.nanometer) for i in range(3)]) / per_side
    else:
        spacing = np.full(3, 0.3)
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid[:n] * spacing


def time_platform(
    system: openmm.System,
    platform_name: str,
    properties: dict[str, str] | None = None,
    max_calls: int = 10,
    budget_s: float = 0.5,
) -> float:
    """Median wall time (s) of one energy + force call of ``system`` on a platform.

    Parameters
    ----------
    system : openmm.System
        The system to time.
    platform_name : str
        OpenMM platform name.
    properties : dict, optional
        Platform properties.
    max_calls : int
        Timed calls at most (after one warm-up call).
    budget_s : float
        Stop timing once this many seconds have been spent.

    Returns
    -------
    float
        Seconds per call.
    """
    context = create_context(system, platform_name, properties)
    positions = _probe_positions(system)
    context.setPositions(positions)
    context.getState(energy=True, forces=True)  # warm-up: kernels, neighbour lists
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        context.setPositions(positions)
        context.getState(energy=True, forces=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def select_platform(openmm_system: openmm.System, n_workers: int = 1, platform_properties: dict | None = None) -> str:
    """The fastest platform for energy + force calls of this system, measured.

    Each available platform among :data:`AUTO_CANDIDATES` is timed on a handful of calls (with
    the CPU thread count ``n_workers`` Contexts would get, and the properties each platform
    knows). For small molecules the per-call overhead dominates and Reference usually wins; for
    large ones CPU or CUDA. The decision is cached per process, keyed by the system's XML hash,
    the thread count and the properties.

    Parameters
    ----------
    openmm_system : openmm.System
        The system.
    n_workers : int
        Number of Contexts that will run at the same time.
    platform_properties : dict, optional
        Properties to use on the platforms that know them.

    Returns
    -------
    str
        Platform name.
    """
    xml_hash = hashlib.sha256(openmm.XmlSerializer.serialize(openmm_system).encode()).hexdigest()
    threads = max(1, n_cores() // max(1, n_workers))
    key = (xml_hash, threads, tuple(sorted((str(k), str(v)) for k, v in (platform_properties or {}).items())))
    if key not in _PLATFORM_CACHE:
        timings: dict[str, float] = {}
        for name in AUTO_CANDIDATES:
            if name not in available_platforms():
                continue
            try:
                properties = resolve_properties(name, platform_properties, n_workers, strict=False)
                timings[name] = time_platform(openmm_system, name, properties)
            except Exception:  # a platform that is installed but cannot run here (no GPU, driver)
                continue
        if not timings:
            raise RuntimeError("no OpenMM platform could evaluate this system")
        _PLATFORM_CACHE[key] = min(timings, key=timings.__getitem__)
    return _PLATFORM_CACHE[key]


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection


class _WorkerDied(Exception):
    """Internal: a worker's process ended (or its pipe broke) while it owned a chunk."""


class WorkerPool:
    """Spawned worker processes, each with its own Context, evaluating contiguous batch chunks.

    Parameters
    ----------
    system_xml : str
        The system serialized with ``openmm.XmlSerializer``.
    platform_name : str
        OpenMM platform name.
    properties : dict
        Platform properties of each worker's Context.
    n_workers : int
        Number of worker processes.
    max_retries : int
        How often a chunk is redone on a fresh worker after its worker died, before giving up.

    Attributes
    ----------
    n_restarts : int
        Number of workers replaced after dying.
    """

    def __init__(
        self, system_xml: str, platform_name: str, properties: dict[str, str], n_workers: int, max_retries: int = 2
    ) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        self._args = (system_xml, platform_name, properties)
        self._mp = multiprocessing.get_context("spawn")  # PME contexts hang in forked children
        self._workers: list[_Worker | None] = [None] * n_workers
        self.max_retries = max_retries
        self.n_restarts = 0

    @property
    def n_workers(self) -> int:
        """Number of worker slots."""
        return len(self._workers)

    @property
    def pids(self) -> list[int | None]:
        """Process ids of the workers (``None`` for a slot not started)."""
        return [w.process.pid if w is not None else None for w in self._workers]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start every missing or dead worker (in parallel) and wait until all are ready."""
        launched = []
        for i, worker in enumerate(self._workers):
            if worker is None or not worker.process.is_alive():
                if worker is not None:
                    self._stop([worker], graceful=False)
                    self.n_restarts += 1
                self._workers[i] = self._launch(i)
                launched.append(i)
        for i in launched:
            self._handshake(i)

    def _launch(self, index: int) -> _Worker:
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=worker_main, args=(child_conn, *self._args), name=f"boltzflow-openmm-{index}", daemon=True
        )
        process.start()
        child_conn.close()  # so that the worker's death shows as EOF on parent_conn
        return _Worker(process, parent_conn)

    def _handshake(self, index: int) -> None:
        worker = self._workers[index]
        try:
            kind, detail = self._receive(worker)
        except _WorkerDied:
            self._stop([worker], graceful=False)
            self._workers[index] = None
            raise WorkerError(
                f"OpenMM worker {index} died while starting (exit code {worker.process.exitcode})"
            ) from None
        if kind != "ready":
            self._stop([worker], graceful=False)
            self._workers[index] = None
            raise WorkerError(f"OpenMM worker {index} could not create its Context:\n{detail}")

    def _replace(self, index: int) -> None:
        self._stop([self._workers[index]], graceful=False)
        self.n_restarts += 1
        self._workers[index] = self._launch(index)
        self._handshake(index)

    @staticmethod
    def _stop(workers: list[_Worker | None], graceful: bool, timeout: float = 2.0) -> None:
        """Stop workers together: ask them to exit, then terminate, then kill what is left."""
        workers = [w for w in workers if w is not None]
        if graceful:
            for worker in workers:
                try:
                    worker.conn.send(None)
                except OSError:  # already gone
                    pass
        for action in ("wait", "terminate", "kill") if graceful else ("terminate", "kill"):
            if action != "wait":
                for worker in workers:
                    if worker.process.is_alive():
                        getattr(worker.process, action)()
            deadline = time.monotonic() + timeout
            for worker in workers:
                worker.process.join(max(0.0, deadline - time.monotonic()))
            if not any(w.process.is_alive() for w in workers):
                break
        for worker in workers:
            worker.conn.close()

    def close(self, graceful: bool = True) -> None:
        """Stop all workers (asking them to exit first when ``graceful``); idempotent."""
        self._stop(self._workers, graceful)
        self._workers = [None] * self.n_workers

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, x: np.ndarray, need_forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Energies (kJ/mol) and forces (kJ/mol/nm) of a ``(B, D)`` float64 C-contiguous batch.

        The batch is split into one contiguous chunk per worker. On any error other than a dead
        worker (including ``KeyboardInterrupt``) all workers are terminated before re-raising;
        the next call starts fresh ones.
        """
        n = x.shape[0]
        energy = np.empty(n)
        forces = np.empty_like(x) if need_forces else None
        bounds = np.linspace(0, n, min(self.n_workers, n) + 1).round().astype(int)
        chunks = list(zip(range(len(bounds) - 1), bounds[:-1], bounds[1:]))
        try:
            self.start()
            for index, start, stop in chunks:
                self._submit(index, x[start:stop], need_forces)
            for index, start, stop in chunks:
                forces_out = None if forces is None else forces[start:stop]
                self._collect(index, x[start:stop], need_forces, energy[start:stop], forces_out)
        except BaseException:
            self.close(graceful=False)
            raise
        return energy, forces

    def _submit(self, index: int, chunk: np.ndarray, need_forces: bool) -> None:
        for _ in range(self.max_retries + 1):
            worker = self._workers[index]
            try:
                worker.conn.send((need_forces, chunk.shape[0]))
                worker.conn.send_bytes(chunk)
                return
            except OSError:  # BrokenPipeError, ConnectionResetError: the worker is gone
                self._replace(index)
        raise WorkerError(f"could not send a chunk to OpenMM worker {index}")

    def _collect(
        self, index: int, chunk: np.ndarray, need_forces: bool, energy_out: np.ndarray, forces_out: np.ndarray | None
    ) -> None:
        for _ in range(self.max_retries + 1):
            worker = self._workers[index]
            try:
                error = self._receive(worker)
                if error is None:
                    worker.conn.recv_bytes_into(energy_out)
                    if need_forces:
                        worker.conn.recv_bytes_into(forces_out.reshape(-1))
            except (_WorkerDied, EOFError, OSError):
                self._replace(index)
                self._submit(index, chunk, need_forces)
                continue
            if error is not None:
                raise WorkerError(f"OpenMM worker {index} failed:\n{error}")
            return
        raise WorkerError(f"OpenMM worker {index} died {self.max_retries + 1} times on the same chunk")

    @staticmethod
    def _receive(worker: _Worker):
        """Next message from a worker; raises ``_WorkerDied`` if it ended instead."""
        ready = wait([worker.conn, worker.process.sentinel])
        if worker.conn not in ready:
            raise _WorkerDied
        try:
            return worker.conn.recv()
        except (EOFError, OSError):
            raise _WorkerDied from None

    def __repr__(self) -> str:
        return f"WorkerPool(n_workers={self.n_workers}, platform={self._args[1]!r})"


class OpenMMEnergy(Energy):
    """Reduced energy ``u = U / (R T)`` of an OpenMM system, with gradients from its forces.

    Parameters
    ----------
    openmm_system : openmm.System
        The system; configurations are ``(B, 3 * n_particles)`` or ``(B, n_particles, 3)``
        positions in nm.
    temperature : float or openmm.unit.Quantity
        Temperature ``T`` in kelvin; ``kT = R T`` in kJ/mol.
    platform : str
        ``"auto"`` (time Reference/CPU/CUDA on this system and take the fastest, see
        :func:`select_platform`) or one of :data:`PLATFORMS`.
    n_workers : int
        ``0`` or ``1``: evaluate in this process with one Context. ``> 1``: a pool of that many
        spawned worker processes, each with its own Context, each evaluating one contiguous chunk
        of every batch; CPU-platform threads are split among them.
    platform_properties : dict, optional
        OpenMM platform properties, e.g. ``{"Threads": "4"}`` or ``{"Precision": "double"}``.

    Attributes
    ----------
    platform_name : str
        The platform in use.
    kT : float
        ``R T`` in kJ/mol.
    n_workers : int
        Number of Contexts (1 means in-process).

    Notes
    -----
    A configuration on which OpenMM raises, or that gives a non-finite energy or force, gets
    ``u = +inf`` (counted in ``n_failed``); the other rows of the batch are unaffected. Nothing is
    cached between calls. Workers are stopped by :meth:`close`, by leaving a ``with`` block, when
    the object is garbage collected, or at interpreter exit. Scripts that use workers must guard
    their entry point with ``if __name__ == "__main__":`` (processes are spawned, not forked).

    Examples
    --------
    ::

        with OpenMMEnergy(system, temperature=300.0, n_workers=2) as energy:
            u = energy(x)  # (B,) reduced energies, differentiable through the forces
    """

    def __init__(
        self,
        openmm_system: openmm.System,
        temperature: float,
        platform: str = "auto",
        n_workers: int = 1,
        platform_properties: dict | None = None,
    ) -> None:
        if not isinstance(openmm_system, openmm.System):
            raise TypeError(f"expected an openmm.System, got {type(openmm_system).__name__}")
        if unit.is_quantity(temperature):
            temperature = temperature.value_in_unit(unit.kelvin)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive (kelvin), got {temperature}")
        if int(n_workers) != n_workers or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative integer, got {n_workers}")
        if platform != "auto" and platform not in PLATFORMS:
            raise ValueError(f"unknown platform {platform!r}; expected 'auto' or one of {PLATFORMS}")
        if platform != "auto" and platform not in available_platforms():
            raise ValueError(f"OpenMM platform {platform!r} is not available here; available: {available_platforms()}")
        n_particles = openmm_system.getNumParticles()
        super().__init__(3 * n_particles, (n_particles, 3))
        self.openmm_system = openmm_system
        self.temperature = float(temperature)
        self.kT = R_KJ_PER_MOL_K * self.temperature
        self.n_workers = max(1, int(n_workers))
        if platform == "auto":
            self.platform_name = select_platform(openmm_system, self.n_workers, platform_properties)
        else:
            self.platform_name = platform
        self.platform_properties = resolve_properties(
            self.platform_name, platform_properties, self.n_workers, strict=platform != "auto"
        )
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._evaluator: ContextEvaluator | None = None
        self._pool: WorkerPool | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def worker_pool(self) -> WorkerPool | None:
        """The worker pool (``None`` in-process or before the first evaluation)."""
        return self._pool

    def _evaluate(self, x: np.ndarray, need_gradient: bool) -> tuple[np.ndarray, np.ndarray | None]:
        with self._lock:
            if self.n_workers == 1:
                if self._evaluator is None:
                    self._evaluator = ContextEvaluator(self.openmm_system, self.platform_name, self.platform_properties)
                energy, forces = self._evaluator.evaluate(x, need_gradient)
            else:
                if self._pool is None:
                    xml = openmm.XmlSerializer.serialize(self.openmm_system)
                    self._pool = WorkerPool(xml, self.platform_name, self.platform_properties, self.n_workers)
                    self._finalizer = weakref.finalize(self, self._pool.close)
                energy, forces = self._pool.evaluate(x, need_gradient)
        energy /= self.kT
        if need_gradient:
            forces *= -1.0 / self.kT
        return energy, forces

    def close(self) -> None:
        """Stop the worker processes and release the Context; a later call starts them again."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()  # runs WorkerPool.close once
            self._evaluator = None
            self._pool = None
            self._finalizer = None

    def __enter__(self) -> "OpenMMEnergy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_lock", "_evaluator", "_pool", "_finalizer"):
            del state[key]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (
            f"OpenMMEnergy(n_atoms={self.dim // 3}, temperature={self.temperature:g} K, "
            f"platform={self.platform_name!r}, n_workers={self.n_workers})"
        )
