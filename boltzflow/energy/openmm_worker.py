"""OpenMM evaluation of configuration batches, in the calling process or in a worker process.

This module only imports numpy and OpenMM (no torch) so that spawned workers start quickly.
Units are OpenMM's: positions in nm, energies in kJ/mol, forces in kJ/mol/nm.

A worker never outlives its parent: on Linux the kernel kills it when the thread that started it
ends (``prctl(PR_SET_PDEATHSIG)``, set only when the main thread started it), and on every
platform a watchdog thread ends it within a moment of the parent's death (the pipe that
:mod:`multiprocessing` keeps open from the parent reaches end-of-file), in the middle of a batch
too.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

import numpy as np
import openmm
import openmm.unit as unit

# Writing forces straight into a caller's array skips the Quantity wrapping of State.getForces,
# which costs more than a whole energy + force call of a small molecule on the Reference platform.
_FORCES_INTO_ARRAY = hasattr(openmm.State, "_getVectorAsNumpy")
_KJ_PER_MOL = unit.kilojoule_per_mole
_KJ_PER_MOL_NM = unit.kilojoule_per_mole / unit.nanometer
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def create_context(
    system: openmm.System, platform_name: str, properties: dict[str, str] | None = None
) -> openmm.Context:
    """A Context on ``platform_name`` with a dummy integrator, for energy and force evaluation.

    Parameters
    ----------
    system : openmm.System
        The system; the Context keeps its own copy.
    platform_name : str
        OpenMM platform name, e.g. ``"Reference"`` or ``"CPU"``.
    properties : dict, optional
        Platform properties (string values), e.g. ``{"Threads": "1"}``.

    Returns
    -------
    openmm.Context
    """
    platform = openmm.Platform.getPlatformByName(platform_name)
    integrator = openmm.VerletIntegrator(0.001)  # ps; never stepped
    return openmm.Context(system, integrator, platform, {k: str(v) for k, v in (properties or {}).items()})


class ContextEvaluator:
    """Energies and forces of configuration batches from one OpenMM Context.

    Each configuration is evaluated independently (``setPositions`` then ``getState``); a
    configuration for which OpenMM raises gets energy ``+inf`` and zero forces, without affecting
    the other rows. Non-finite energies or forces are returned as they are.

    Parameters
    ----------
    system : openmm.System
        The system to evaluate.
    platform_name : str
        OpenMM platform name.
    properties : dict, optional
        Platform properties.
    """

    def __init__(self, system: openmm.System, platform_name: str, properties: dict[str, str] | None = None) -> None:
        self.n_particles = system.getNumParticles()
        self.context = create_context(system, platform_name, properties)
        self.platform_name = self.context.getPlatform().getName()
        self._virtual = np.array([system.isVirtualSite(i) for i in range(self.n_particles)], dtype=bool)
        self._has_virtual_sites = bool(self._virtual.any())

    def evaluate(
        self, x: np.ndarray, need_forces: bool, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Evaluate a batch.

        Parameters
        ----------
        x : np.ndarray
            ``(B, 3 * n_particles)`` or ``(B, n_particles, 3)`` positions in nm.
        need_forces : bool
            Also compute forces.
        progress : callable, optional
            Called with the number of rows done after each row (a worker's heartbeat).

        Returns
        -------
        energy : np.ndarray
            ``(B,)`` potential energies in kJ/mol (``+inf`` where OpenMM raised).
        forces : np.ndarray or None
            ``(B, 3 * n_particles)`` forces in kJ/mol/nm when requested.
        """
        positions = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, self.n_particles, 3)
        n = positions.shape[0]
        energy = np.empty(n)
        forces = np.zeros((n, self.n_particles, 3)) if need_forces else None
        context = self.context
        for i in range(n):
            try:
                context.setPositions(positions[i])
                if self._has_virtual_sites:
                    context.computeVirtualSites()
                state = context.getState(energy=True, forces=need_forces)
                energy[i] = state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL)
                if need_forces:
                    if _FORCES_INTO_ARRAY:
                        state._getVectorAsNumpy(openmm.State.Forces, forces[i])
                    else:
                        forces[i] = state.getForces(asNumpy=True).value_in_unit(_KJ_PER_MOL_NM)
            except openmm.OpenMMException:
                energy[i] = np.inf
                if need_forces:
                    forces[i] = 0.0
            if progress is not None:
                progress(i + 1)
        if need_forces and self._has_virtual_sites:
            # OpenMM places virtual sites itself (the input positions of those sites are unused) and
            # has already spread their forces onto the real atoms; what getState still reports on
            # a virtual site is not a derivative of the energy: the gradient there is zero.
            forces[:, self._virtual] = 0.0
        return energy, (forces.reshape(n, -1) if need_forces else None)


def exit_with_parent(kill_on_thread_exit: bool) -> None:
    """Make the calling (worker) process end as soon as its parent process dies.

    Two mechanisms: on Linux, when ``kill_on_thread_exit``, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``
    has the kernel kill this process when the *thread* that started it ends (so the parent asks
    for it only when its main thread started the worker); everywhere, a daemon thread waits for
    the end-of-file of the pipe that :mod:`multiprocessing` holds open from the parent and then
    ends this process with exit code 1, whatever the main thread is doing. Does nothing in a
    process that was not started by :mod:`multiprocessing`.

    Parameters
    ----------
    kill_on_thread_exit : bool
        Also ask the Linux kernel for ``SIGKILL`` when the starting thread ends.

    Examples
    --------
    >>> exit_with_parent(False)  # in the main process: nothing to watch
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if kill_on_thread_exit and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.name == "posix" and os.getppid() != parent.pid:  # died before prctl: already re-parented
        os._exit(1)

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="boltzflow-parent-watch", daemon=True).start()


class _Heartbeat:
    """Progress callback of a worker: ``("alive", seconds_per_row)`` at most every ``interval_s``."""

    def __init__(self, conn: Connection, interval_s: float) -> None:
        self.conn = conn
        self.interval_s = interval_s
        self.start = time.monotonic()
        self.next_send = self.start + interval_s

    def __call__(self, rows_done: int) -> None:
        now = time.monotonic()
        if now >= self.next_send:
            self.conn.send(("alive", (now - self.start) / rows_done))
            self.next_send = now + self.interval_s

    def seconds_per_row(self, n_rows: int) -> float:
        """Mean time of one row so far."""
        return (time.monotonic() - self.start) / max(1, n_rows)


def worker_main(
    conn: Connection,
    system_xml: str,
    platform_name: str,
    properties: dict[str, str],
    heartbeat_s: float = 1.0,
    kill_on_thread_exit: bool = False,
) -> None:
    """Entry point of a worker process: serve evaluation requests on ``conn`` until told to stop.

    Protocol (all in one direction at a time):

    * at start the worker sends ``("ready", platform_name)`` or ``("error", traceback)``;
    * a request is ``conn.send((need_forces, n_rows))`` followed by ``conn.send_bytes(x)`` with
      the ``(n_rows, D)`` float64 positions (nm);
    * while it works the worker sends ``("alive", seconds_per_row)`` at most every ``heartbeat_s``
      seconds (``seconds_per_row``: the mean time of one row of this request so far);
    * the reply is ``("done", seconds_per_row)`` followed by ``send_bytes`` of the ``(n_rows,)``
      energies (kJ/mol) and, if requested, the ``(n_rows, D)`` forces (kJ/mol/nm), or
      ``("failed", traceback)`` on an unexpected error;
    * ``None`` instead of a request, or a closed connection, ends the worker.

    SIGINT is ignored: Ctrl-C is handled by the parent, which terminates its workers. The worker
    ends by itself when its parent dies (:func:`exit_with_parent`).

    Parameters
    ----------
    conn : Connection
        The worker's end of a duplex pipe to the parent.
    system_xml : str
        The system serialized with ``openmm.XmlSerializer``.
    platform_name : str
        OpenMM platform name.
    properties : dict
        Platform properties.
    heartbeat_s : float
        Least time between two ``("alive", ...)`` messages.
    kill_on_thread_exit : bool
        Passed to :func:`exit_with_parent`.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(kill_on_thread_exit)
    try:
        evaluator = ContextEvaluator(openmm.XmlSerializer.deserialize(system_xml), platform_name, properties)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", evaluator.platform_name))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        need_forces, n_rows = request
        x = np.frombuffer(conn.recv_bytes(), dtype=np.float64).reshape(n_rows, -1)
        heartbeat = _Heartbeat(conn, heartbeat_s)
        try:
            energy, forces = evaluator.evaluate(x, need_forces, progress=heartbeat)
        except Exception:
            conn.send(("failed", traceback.format_exc()))
            continue
        conn.send(("done", heartbeat.seconds_per_row(n_rows)))
        conn.send_bytes(energy)
        if need_forces:
            conn.send_bytes(forces)
