"""`SampleSet`: the contract every sampler returns and every estimate reads.

A SampleSet holds configurations with their reduced energies and log importance weights, plus
metadata (which system, temperature, sampler, seed, failure counts...). Samplers fill it; the
estimation layer (:mod:`boltzflow.estimate`) turns it into numbers. Nothing here computes an
estimate.

Weights convention
------------------
``log_weights[i]`` is the log importance weight of sample ``i`` with respect to the target
Boltzmann density ``exp(-u)``:

* exact or MCMC/MD samples: ``0`` for every sample (``metadata["correlated"]`` tells whether the
  samples form correlated chains);
* flow samples: ``log w = -u(x) - log q(x)``. When ``q`` is a normalised density
  ``metadata["normalized_proposal"]`` is True and ``mean(w)`` estimates the partition function Z;
* failed samples (non-finite energy): ``log w = -inf`` — zero weight, counted in
  ``metadata["n_failed"]``. A row with a non-finite coordinate is a failed sample too, whatever
  energy was stored for it: its energy becomes ``+inf`` (as :class:`~boltzflow.energy.base.Energy`
  gives such rows), so it has zero weight and is counted.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write

_FORMAT_VERSION = 1
_ARRAYS = ("x", "energies", "log_weights", "chain", "time")
# dtype kinds accepted for a float column ("f") and an integer column ("i", whole floats included):
# no strings, objects or complex numbers
_NUMERIC_KINDS = {"f": "biuf", "i": "biuf"}


class SampleSetError(ValueError):
    """Raised for inconsistent sample arrays or unreadable / corrupted sample files."""


@dataclass
class SampleSet:
    """Samples with reduced energies and log-weights.

    Parameters
    ----------
    x : np.ndarray
        ``(N, D)`` configurations (nm for molecular systems, reduced units otherwise).
    energies : np.ndarray
        ``(N,)`` reduced energies ``u = U/kT`` of the target; ``+inf`` where evaluation failed.
    log_weights : np.ndarray, optional
        ``(N,)`` log importance weights (see module docstring); zeros by default.
    chain : np.ndarray, optional
        ``(N,)`` integer chain index for samples from several Markov chains / trajectories.
    time : np.ndarray, optional
        ``(N,)`` simulation time (ps for MD) or step index of each sample.
    metadata : dict
        JSON-serialisable information: ``system``, ``temperature``, ``sampler``, ``seed``,
        ``n_failed``, ``correlated``, ``normalized_proposal``, sampler diagnostics...
    """

    x: np.ndarray
    energies: np.ndarray
    log_weights: np.ndarray | None = None
    chain: np.ndarray | None = None
    time: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x)
        if self.x.dtype.kind not in _NUMERIC_KINDS["f"]:
            raise SampleSetError(f"x must hold real numbers, got dtype {self.x.dtype}")
        self.x = self.x.astype(np.float64)
        if self.x.ndim == 1:
            self.x = self.x[:, None]
        if self.x.ndim != 2:
            raise SampleSetError(f"x must have shape (N, D), got {self.x.shape}")
        n = self.x.shape[0]
        self.energies = self._column("energies", self.energies, n, np.float64)
        if np.isnan(self.energies).any():
            raise SampleSetError("energies contain NaN; failed evaluations must be stored as +inf")
        # A configuration with a non-finite coordinate has no energy: it is a failed sample.
        self.energies = np.where(np.isfinite(self.x).all(axis=1), self.energies, np.inf)
        if self.log_weights is None:
            self.log_weights = np.zeros(n)
        self.log_weights = self._column("log_weights", self.log_weights, n, np.float64)
        if np.isnan(self.log_weights).any() or np.isposinf(self.log_weights).any():
            raise SampleSetError("log_weights must be finite or -inf (zero weight), got NaN/+inf")
        # A failed energy evaluation has zero weight, whatever the sampler wrote.
        self.log_weights = np.where(np.isfinite(self.energies), self.log_weights, -np.inf)
        if self.chain is not None:
            self.chain = self._column("chain", self.chain, n, np.int64)
        if self.time is not None:
            self.time = self._column("time", self.time, n, np.float64)
            if not np.isfinite(self.time).all():
                raise SampleSetError("time must be finite")
        self.metadata = dict(self.metadata)
        for flag in ("correlated", "normalized_proposal"):
            if not isinstance(self.metadata.get(flag, False), bool):
                raise SampleSetError(f"metadata['{flag}'] must be true or false, got {self.metadata[flag]!r}")
        self.metadata["n_failed"] = int(np.count_nonzero(~np.isfinite(self.energies)))
        try:
            json.dumps(self.metadata)
        except TypeError as err:
            raise SampleSetError(f"metadata must be JSON-serialisable: {err}") from None

    @staticmethod
    def _column(name: str, values: Any, n: int, dtype: type) -> np.ndarray:
        arr = np.asarray(values)
        if arr.dtype.kind not in _NUMERIC_KINDS[np.dtype(dtype).kind]:
            raise SampleSetError(f"{name} must hold {np.dtype(dtype).name} numbers, got dtype {arr.dtype}")
        if np.dtype(dtype).kind == "i" and arr.dtype.kind == "f" and not np.all(np.round(arr) == arr):
            raise SampleSetError(f"{name} must hold whole numbers")
        arr = arr.astype(dtype).reshape(-1)
        if arr.shape[0] != n:
            raise SampleSetError(f"{name} has {arr.shape[0]} entries for {n} samples")
        return arr

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        """Number of degrees of freedom ``D``."""
        return self.x.shape[1]

    @property
    def n_failed(self) -> int:
        """Number of samples whose energy evaluation failed (zero weight)."""
        return int(self.metadata["n_failed"])

    @property
    def is_weighted(self) -> bool:
        """True if any finite log-weight differs from the others (importance samples)."""
        finite = self.log_weights[np.isfinite(self.log_weights)]
        return finite.size > 0 and bool(np.ptp(finite) > 0)

    @property
    def correlated(self) -> bool:
        """True if the samples are correlated Markov chains / trajectories (MD, MCMC)."""
        return bool(self.metadata.get("correlated", False))

    def __getitem__(self, index: Any) -> "SampleSet":
        """A subset (slice, index array or boolean mask) with the same metadata."""
        idx = np.arange(len(self))[index]
        return SampleSet(
            x=self.x[idx],
            energies=self.energies[idx],
            log_weights=self.log_weights[idx],
            chain=None if self.chain is None else self.chain[idx],
            time=None if self.time is None else self.time[idx],
            metadata=self.metadata,
        )

    @classmethod
    def concatenate(cls, parts: list["SampleSet"]) -> "SampleSet":
        """Join sample sets of the same system (metadata from the first one)."""
        if not parts:
            raise SampleSetError("nothing to concatenate")

        def cat(name: str) -> np.ndarray | None:
            cols = [getattr(p, name) for p in parts]
            if all(c is None for c in cols):
                return None
            if any(c is None for c in cols):
                raise SampleSetError(f"cannot concatenate: only some parts have '{name}'")
            return np.concatenate(cols)

        return cls(
            x=np.concatenate([p.x for p in parts]),
            energies=np.concatenate([p.energies for p in parts]),
            log_weights=np.concatenate([p.log_weights for p in parts]),
            chain=cat("chain"),
            time=cat("time"),
            metadata=parts[0].metadata,
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the samples atomically.

        ``path`` is either a ``.npz`` file or a directory (then ``DIR/samples.npz``). Metadata is
        stored inside the ``.npz`` and, for people, beside it as ``samples.json``. Both files are
        written to a temporary name and renamed, so a crash never leaves a half-written file.

        Returns
        -------
        Path
            The ``.npz`` file written.
        """
        target = _npz_path(Path(path), for_writing=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"x": self.x, "energies": self.energies, "log_weights": self.log_weights}
        if self.chain is not None:
            arrays["chain"] = self.chain
        if self.time is not None:
            arrays["time"] = self.time
        meta = json.dumps({"format_version": _FORMAT_VERSION, **self.metadata}, indent=2, sort_keys=True)
        arrays["metadata_json"] = np.array(meta)
        atomic_write(target, lambda f: np.savez(f, **arrays))
        atomic_write(target.with_suffix(".json"), lambda f: f.write(meta.encode()))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SampleSet":
        """Read samples written by :meth:`save` (a ``.npz`` file or its directory).

        Raises
        ------
        FileNotFoundError
            If there is no sample file at ``path``.
        SampleSetError
            If the file is truncated, corrupted or not a boltzflow sample file.
        """
        source = _npz_path(Path(path), for_writing=False)
        try:
            with np.load(source, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise SampleSetError(f"{source} is not a readable sample file (corrupted or truncated?): {err}") from None
        missing = {"x", "energies", "log_weights", "metadata_json"} - set(arrays)
        if missing:
            raise SampleSetError(f"{source} is not a boltzflow sample file: missing {sorted(missing)}")
        unknown = set(arrays) - {*_ARRAYS, "metadata_json"}
        if unknown:
            raise SampleSetError(f"{source} is not a boltzflow sample file: unexpected arrays {sorted(unknown)}")
        text = arrays.pop("metadata_json")
        if text.shape != () or text.dtype.kind != "U":
            raise SampleSetError(f"{source}: metadata is corrupted: expected one JSON string, got "
                                 f"an array of shape {text.shape} and dtype {text.dtype}")
        try:
            metadata = json.loads(str(text))
        except json.JSONDecodeError as err:
            raise SampleSetError(f"{source}: metadata is corrupted: {err}") from None
        if not isinstance(metadata, dict):
            raise SampleSetError(f"{source}: metadata is corrupted: expected a JSON object, "
                                 f"got {type(metadata).__name__}")
        version = metadata.pop("format_version", None)
        if version != _FORMAT_VERSION:
            raise SampleSetError(f"{source}: unsupported sample file version {version}")
        try:
            return cls(metadata=metadata, **arrays)
        except SampleSetError as err:
            raise SampleSetError(f"{source}: {err}") from None

    def to_mdtraj(self, topology: Any) -> Any:
        """An ``mdtraj.Trajectory`` of the samples (coordinates in nm; ``time`` in ps if present).

        Parameters
        ----------
        topology : mdtraj.Topology
            Topology with ``D / 3`` atoms.
        """
        import mdtraj

        if topology is None:
            raise SampleSetError("writing a trajectory needs a molecular topology; this system has none")
        if self.dim != 3 * topology.n_atoms:
            raise SampleSetError(f"samples have {self.dim} coordinates, topology has {topology.n_atoms} atoms")
        return mdtraj.Trajectory(self.x.reshape(len(self), topology.n_atoms, 3), topology, time=self.time)

    def save_trajectory(self, path: str | os.PathLike, topology: Any) -> Path:
        """Write the samples as a trajectory (format from the suffix: .dcd, .xtc, .h5, .pdb), atomically."""
        path = Path(path)
        if path.suffix.lower() not in {".dcd", ".xtc", ".h5", ".pdb", ".nc"}:
            raise SampleSetError(f"unsupported trajectory format '{path.suffix}' (use .dcd, .xtc, .h5, .pdb, .nc)")
        traj = self.to_mdtraj(topology)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
        try:
            traj.save(str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def __repr__(self) -> str:
        meta = ", ".join(f"{k}={self.metadata[k]!r}" for k in ("system", "sampler") if k in self.metadata)
        return f"SampleSet(n={len(self)}, dim={self.dim}, n_failed={self.n_failed}{', ' + meta if meta else ''})"


def _npz_path(path: Path, for_writing: bool) -> Path:
    if path.suffix == ".npz":
        if not for_writing and not path.exists():
            raise FileNotFoundError(f"no sample file at {path}")
        return path
    if path.is_dir() or for_writing:
        candidate = path / "samples.npz"
        if not for_writing and not candidate.exists():
            raise FileNotFoundError(f"{path} holds no samples.npz (is it a boltzflow run directory?)")
        return candidate
    raise FileNotFoundError(f"no sample file or run directory at {path}")
