"""OpenMM bridge: reduced energies ``u = U / kT`` and gradients of an ``openmm.System``.

Positions are in nm and energies in kJ/mol at the OpenMM boundary; :class:`OpenMMEnergy` returns
``u = U / (R T)`` and ``du/dx = -F / (R T)`` with ``R`` the molar gas constant in kJ/mol/K.

Evaluation runs either in the calling process (one Context) or in a pool of spawned worker
processes, each with its own Context, that receive one contiguous chunk of the batch per call as
raw float64 bytes (no per-configuration pickling). Workers ignore SIGINT, are replaced when they
die or stop answering (their chunk is redone), end by themselves within a moment when the parent
process dies, and are shut down by :meth:`OpenMMEnergy.close`, a context manager, garbage
collection or interpreter exit.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import numpy as np
import openmm
import openmm.unit as unit

from .base import Energy
from .openmm_worker import ContextEvaluator, create_context, worker_main
from .units import R_KJ_PER_MOL_K

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
    """A worker process, the parent's end of its pipe, and the thread that does that pipe's I/O."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    exchange: "_Exchange | None" = None
    jobs: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._serve, name="boltzflow-openmm-io", daemon=True).start()

    def _serve(self) -> None:
        """Run the exchanges put on ``jobs`` until ``None`` arrives."""
        while (exchange := self.jobs.get()) is not None:
            exchange.run(self.conn)


class _WorkerDied(Exception):
    """Internal: a worker's process ended (or its pipe broke) before it answered."""


class _Exchange:
    """One chunk's request and reply with one worker, run on the worker's I/O thread.

    That thread does all the pipe I/O of the chunk, so a worker that stops answering (or stops
    reading) blocks only it; the pool kills such a worker, which ends the exchange with
    end-of-file. ``last_seen`` is the time of the worker's last message.
    """

    def __init__(
        self,
        worker: _Worker,
        chunk: np.ndarray,
        need_forces: bool,
        energy_out: np.ndarray,
        forces_out: np.ndarray | None,
    ) -> None:
        self.worker = worker
        self.chunk = chunk
        self.need_forces = need_forces
        self.energy_out = energy_out
        self.forces_out = forces_out
        self.last_seen = time.monotonic()
        self.seconds_per_row = 0.0
        self.finished = False  # the reply arrived in full
        self.error: str | None = None  # a traceback the worker sent
        self.timed_out = False
        self.done = threading.Event()
        worker.exchange = self
        worker.jobs.put(self)

    def run(self, conn: Connection) -> None:
        """Send the chunk and receive the reply into the output arrays; sets ``done`` at the end."""
        try:
            conn.send((self.need_forces, self.chunk.shape[0]))
            conn.send_bytes(self.chunk)
            while True:
                kind, detail = conn.recv()
                self.last_seen = time.monotonic()
                if kind == "failed":
                    self.error = detail
                    return
                self.seconds_per_row = max(self.seconds_per_row, detail)
                if kind == "done":
                    conn.recv_bytes_into(self.energy_out)
                    if self.need_forces:
                        conn.recv_bytes_into(self.forces_out.reshape(-1))
                    self.finished = True
                    return
        except (EOFError, OSError):  # the worker died or was killed: the pool redoes the chunk
            return
        finally:
            self.done.set()


class WorkerPool:
    """Spawned worker processes, each with its own Context, evaluating contiguous batch chunks.

    Every worker sends a heartbeat while it works (every ``min(1, timeout / 4)`` s, between two
    configurations); one that sends nothing for ``max(timeout, timeout_factor * seconds_per_row)``
    seconds is declared hung,
    killed and replaced, and its chunk is redone on the fresh worker, exactly like the chunk of a
    worker that died. Each chunk's energies come from exactly one complete reply, so results are
    the same as without the failure and nothing is counted twice.

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
        How often a chunk is redone on a fresh worker after its worker died or hung, before
        giving up with :class:`WorkerError`.
    timeout : float
        Seconds without any message from a busy worker before it counts as hung (the floor of the
        scaled limit; see :attr:`silence_limit_s`).
    timeout_factor : float
        The limit is at least this many times :attr:`seconds_per_row`.
    start_timeout : float
        Seconds a new worker may take to create its Context and report ready.

    Attributes
    ----------
    n_restarts : int
        Number of workers replaced after dying or hanging.
    n_timeouts : int
        Number of workers killed because they stopped answering.
    seconds_per_row : float
        The largest mean time of one configuration in a chunk, over the pool's lifetime.

    Examples
    --------
    >>> pool = WorkerPool("<System/>", "Reference", {}, n_workers=2, timeout=5.0)
    >>> pool.silence_limit_s
    5.0
    """

    def __init__(
        self,
        system_xml: str,
        platform_name: str,
        properties: dict[str, str],
        n_workers: int,
        max_retries: int = 2,
        timeout: float = 30.0,
        timeout_factor: float = 20.0,
        start_timeout: float = 300.0,
    ) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        if not (timeout > 0 and timeout_factor > 0 and start_timeout > 0):
            raise ValueError("timeout, timeout_factor and start_timeout must be positive")
        self._args = (system_xml, platform_name, properties)
        self._mp = multiprocessing.get_context("spawn")  # PME contexts hang in forked children
        self._workers: list[_Worker | None] = [None] * n_workers
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.timeout_factor = float(timeout_factor)
        self.start_timeout = float(start_timeout)
        self.heartbeat_s = min(1.0, self.timeout / 4)
        self.n_restarts = 0
        self.n_timeouts = 0
        self.seconds_per_row = 0.0

    @property
    def n_workers(self) -> int:
        """Number of worker slots."""
        return len(self._workers)

    @property
    def pids(self) -> list[int | None]:
        """Process ids of the workers (``None`` for a slot not started)."""
        return [w.process.pid if w is not None else None for w in self._workers]

    @property
    def silence_limit_s(self) -> float:
        """Seconds without a message after which a busy worker is declared hung."""
        return max(self.timeout, self.timeout_factor * self.seconds_per_row)

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
        # PR_SET_PDEATHSIG fires when the starting *thread* ends: ask for it only from the main thread
        from_main_thread = threading.current_thread() is threading.main_thread()
        process = self._mp.Process(
            target=worker_main,
            args=(child_conn, *self._args, self.heartbeat_s, from_main_thread),
            name=f"boltzflow-openmm-{index}",
            daemon=True,
        )
        process.start()
        child_conn.close()  # so that the worker's death shows as EOF on parent_conn
        return _Worker(process, parent_conn)

    def _handshake(self, index: int) -> None:
        worker = self._workers[index]
        try:
            kind, detail = self._receive(worker, self.start_timeout)
        except _WorkerDied:
            self._stop([worker], graceful=False)
            self._workers[index] = None
            raise WorkerError(
                f"OpenMM worker {index} died while starting (exit code {worker.process.exitcode})"
            ) from None
        except TimeoutError:
            self._stop([worker], graceful=False)
            self._workers[index] = None
            raise WorkerError(
                f"OpenMM worker {index} did not report ready within {self.start_timeout:g} s (start_timeout)"
            ) from None
        if kind != "ready":
            self._stop([worker], graceful=False)
            self._workers[index] = None
            raise WorkerError(f"OpenMM worker {index} could not create its Context:\n{detail}")

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
            worker.jobs.put(None)  # ends the I/O thread once its exchange (if any) ends
            if worker.exchange is not None:  # an exchange ends at the EOF of the dead worker
                worker.exchange.done.wait(timeout)
            worker.conn.close()

    def close(self, graceful: bool = True) -> None:
        """Stop all workers (asking them to exit first when ``graceful``); idempotent."""
        self._stop(self._workers, graceful)
        self._workers = [None] * self.n_workers

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, x: np.ndarray, need_forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Energies (kJ/mol) and forces (kJ/mol/nm) of a ``(B, D)`` float64 C-contiguous batch.

        The batch is split into one contiguous chunk per worker. A chunk whose worker dies or
        hangs is redone on a fresh worker (at most ``max_retries`` times). On any other error
        (including ``KeyboardInterrupt``) all workers are terminated before re-raising; the next
        call starts fresh ones.
        """
        n = x.shape[0]
        energy = np.empty(n)
        forces = np.empty_like(x) if need_forces else None
        bounds = np.linspace(0, n, min(self.n_workers, n) + 1).round().astype(int)
        pending = list(zip(range(len(bounds) - 1), bounds[:-1], bounds[1:]))
        try:
            for _ in range(self.max_retries + 1):
                self.start()  # at a retry: replaces the workers that died or were killed as hung
                exchanges = [
                    _Exchange(
                        self._workers[index], x[start:stop], need_forces, energy[start:stop],
                        None if forces is None else forces[start:stop],
                    )
                    for index, start, stop in pending
                ]
                for exchange in exchanges:
                    self._supervise(exchange)
                for (index, _, _), exchange in zip(pending, exchanges):
                    if exchange.error is not None:
                        raise WorkerError(f"OpenMM worker {index} failed:\n{exchange.error}")
                failed = [(chunk, exchange) for chunk, exchange in zip(pending, exchanges) if not exchange.finished]
                if not failed:
                    return energy, forces
                pending = [chunk for chunk, _ in failed]
            (index, _, _), exchange = failed[0]
            cause = f"did not answer for {self.silence_limit_s:g} s" if exchange.timed_out else "died"
            raise WorkerError(
                f"OpenMM worker {index} failed on the same chunk {self.max_retries + 1} times "
                f"(last time it {cause}); see WorkerPool's max_retries and timeout"
            )
        except BaseException:
            self.close(graceful=False)
            raise

    def _supervise(self, exchange: _Exchange) -> None:
        """Wait for one exchange; kill its worker if it stays silent past :attr:`silence_limit_s`."""
        while True:
            limit = max(self.silence_limit_s, self.timeout_factor * exchange.seconds_per_row)
            if exchange.done.wait(max(0.01, exchange.last_seen + limit - time.monotonic())):
                break
            if time.monotonic() - exchange.last_seen > limit:
                exchange.timed_out = True
                self.n_timeouts += 1
                exchange.worker.process.kill()  # SIGKILL works on a stopped process, SIGTERM does not
                exchange.worker.process.join(self.timeout)
                exchange.done.wait(self.timeout)  # the thread ends at the EOF of the killed worker
                break
        self.seconds_per_row = max(self.seconds_per_row, exchange.seconds_per_row)

    @staticmethod
    def _receive(worker: _Worker, timeout: float) -> tuple[str, str]:
        """Next message from a worker; raises ``_WorkerDied`` if it ended, ``TimeoutError`` if silent."""
        ready = wait([worker.conn, worker.process.sentinel], timeout)
        if not ready:
            raise TimeoutError
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
    worker_timeout : float
        Seconds a busy worker may stay silent before it is killed and replaced and its chunk
        redone: the floor of ``max(worker_timeout, 20 * mean time of one configuration)``
        (see :class:`WorkerPool`).

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
        worker_timeout: float = 30.0,
    ) -> None:
        if not isinstance(openmm_system, openmm.System):
            raise TypeError(f"expected an openmm.System, got {type(openmm_system).__name__}")
        if unit.is_quantity(temperature):
            temperature = temperature.value_in_unit(unit.kelvin)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive (kelvin), got {temperature}")
        if int(n_workers) != n_workers or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative integer, got {n_workers}")
        if not worker_timeout > 0:
            raise ValueError(f"worker_timeout must be positive (seconds), got {worker_timeout}")
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
        self.worker_timeout = float(worker_timeout)
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
                    self._pool = WorkerPool(
                        xml, self.platform_name, self.platform_properties, self.n_workers,
                        timeout=self.worker_timeout,
                    )
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
