"""OpenMM evaluation of configuration batches, in the calling process or in a worker process.

This module only imports numpy and OpenMM (no torch) so that spawned workers start quickly.
Units are OpenMM's: positions in nm, energies in kJ/mol, forces in kJ/mol/nm.
"""

from __future__ import annotations

import signal
import traceback
from multiprocessing.connection import Connection

import numpy as np
import openmm
import openmm.unit as unit

# Writing forces straight into a caller's array skips the Quantity wrapping of State.getForces,
# which costs more than a whole energy + force call of a small molecule on the Reference platform.
_FORCES_INTO_ARRAY = hasattr(openmm.State, "_getVectorAsNumpy")
_KJ_PER_MOL = unit.kilojoule_per_mole
_KJ_PER_MOL_NM = unit.kilojoule_per_mole / unit.nanometer


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

    def evaluate(self, x: np.ndarray, need_forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Evaluate a batch.

        Parameters
        ----------
        x : np.ndarray
            ``(B, 3 * n_particles)`` or ``(B, n_particles, 3)`` positions in nm.
        need_forces : bool
            Also compute forces.

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
        if need_forces and self._has_virtual_sites:
            # OpenMM places virtual sites itself (the input positions of those sites are unused) and
            # has already spread their forces onto the real atoms; what getState still reports on
            # a virtual site is not a derivative of the energy: the gradient there is zero.
            forces[:, self._virtual] = 0.0
        return energy, (forces.reshape(n, -1) if need_forces else None)


def worker_main(conn: Connection, system_xml: str, platform_name: str, properties: dict[str, str]) -> None:
    """Entry point of a worker process: serve evaluation requests on ``conn`` until told to stop.

    Protocol (all in one direction at a time):

    * at start the worker sends ``("ready", platform_name)`` or ``("error", traceback)``;
    * a request is ``conn.send((need_forces, n_rows))`` followed by ``conn.send_bytes(x)`` with
      the ``(n_rows, D)`` float64 positions (nm);
    * the reply is ``conn.send(None)`` (or ``conn.send(traceback)`` on an unexpected error)
      followed by ``send_bytes`` of the ``(n_rows,)`` energies (kJ/mol) and, if requested, the
      ``(n_rows, D)`` forces (kJ/mol/nm);
    * ``None`` instead of a request, or a closed connection, ends the worker.

    SIGINT is ignored: Ctrl-C is handled by the parent, which terminates its workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
        try:
            energy, forces = evaluator.evaluate(x, need_forces)
        except Exception:
            conn.send(traceback.format_exc())
            continue
        conn.send(None)
        conn.send_bytes(energy)
        if need_forces:
            conn.send_bytes(forces)
