"""The one model-file format of every trained model: flow, continuous flow, SNF and LFEP map.

A model file is a checksummed torch file (:func:`boltzflow.integrity.write_torch`, read back with
``weights_only=True``, so loading never runs code) holding one dict::

    {"format": tag, "version": int, "config": dict, "metadata": dict, "state_dict": dict}

``format`` names the kind of model (:data:`MODEL_KINDS`), ``config`` is what the kind's builder
needs to rebuild the module, ``state_dict`` its tensors and ``metadata`` JSON-like information
(system, training settings). :func:`save_model_file` writes it, :func:`load_model_file` reads and
checks it (format tag, kind, version, parts), and :func:`load_state` rebuilds the module; every
problem is a one-line :class:`ModelFileError` naming the file. The kind-specific checks (the
system a model was trained for) stay with each kind's ``load_*`` function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..integrity import read_torch, write_torch

_Module = TypeVar("_Module", bound=torch.nn.Module)


class ModelFileError(ValueError):
    """Raised for an unreadable, corrupted or mismatched model file."""


@dataclass(frozen=True)
class ModelKind:
    """One kind of model file: its on-disk tag and version, and how messages name it.

    Attributes
    ----------
    format : str
        The ``"format"`` tag stored in the file.
    version : int
        The format version written and accepted.
    what : str
        What the file is called in messages ("model file", "SNF file").
    title : str
        The model as in "is not a boltzflow <title>".
    noun : str
        The model with its article, as in "is <noun>, not ...".
    remedy : str
        What to do about a damaged file.
    train : str
        The command that makes one.
    sampler : str
        The ``--sampler`` value(s) that use it.
    """

    format: str
    version: int
    what: str
    title: str
    noun: str
    remedy: str
    train: str
    sampler: str


MODEL_KINDS: dict[str, ModelKind] = {
    "flow": ModelKind("boltzflow-flow-model", 2, "model file", "flow model", "a normalizing-flow model",
                      "re-train or re-download it", "boltzflow train", "flow"),
    "continuous": ModelKind("boltzflow-continuous-flow", 1, "model file", "continuous-flow model",
                            "a continuous-flow model", "re-train or re-download it", "boltzflow train-cnf",
                            "cnf-exact, cnf-hutchinson, fp-is, fp or fp-smc"),
    "snf": ModelKind("boltzflow-snf-model", 1, "SNF file", "SNF file", "an SNF", "re-train it",
                     "boltzflow train --snf", "snf"),
    "lfep": ModelKind("boltzflow-lfep", 1, "LFEP model file", "LFEP model file", "an LFEP map", "re-train it",
                      "boltzflow train --lfep", "lfep"),
}
"""The kinds of model file, by name."""

_PARTS = ("config", "metadata", "state_dict")


def _kind(name: str) -> ModelKind:
    """The :class:`ModelKind` called ``name``; ValueError for an unknown one."""
    if name not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {name!r}; one of {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[name]


def save_model_file(
    path: str | Path, kind: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a model file of ``kind`` atomically, with its SHA-256; parent folders are created.

    Parameters
    ----------
    path : path
        Output file (conventionally ``.pt``).
    kind : str
        A key of :data:`MODEL_KINDS` (``"flow"``, ``"continuous"``, ``"snf"``, ``"lfep"``).
    config : dict
        What the kind's builder needs to rebuild the module.
    state_dict : dict
        The module's tensors, as they should be stored (detached, on the CPU).
    metadata : dict, optional
        JSON-like information returned by :func:`load_model_file`.

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, torch
    >>> path = save_model_file(Path(tempfile.mkdtemp()) / "m.pt", "snf", {"dim": 2}, {"w": torch.ones(2)})
    >>> load_model_file(path, "snf")
    ({'dim': 2}, {'w': tensor([1., 1.])}, {})
    """
    spec = _kind(kind)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_torch(path, {"format": spec.format, "version": spec.version, "config": config,
                       "metadata": dict(metadata or {}), "state_dict": state_dict})
    return path


def load_model_file(path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read a model file of ``kind`` written by :func:`save_model_file`, verifying its checksum.

    Parameters
    ----------
    path : path
        Model file.
    kind : str
        The kind expected (a key of :data:`MODEL_KINDS`).

    Returns
    -------
    config, state_dict, metadata : dict

    Raises
    ------
    ModelFileError
        If the file is missing, corrupted (its SHA-256 does not match) or truncated, not a torch
        file, refused by the safe loader (a pickle that would run code), a model file of another
        kind (named, with the sampler to use), of another format version, or lacks a part.

    Warns
    -----
    boltzflow.integrity.UnverifiedFileWarning
        For a model file written before checksums were stored.

    Examples
    --------
    >>> import tempfile, torch
    >>> path = save_model_file(Path(tempfile.mkdtemp()) / "snf.pt", "snf", {"dim": 2}, {})
    >>> load_model_file(path, "flow")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    boltzflow.flows.model_file.ModelFileError: ... is not a boltzflow flow model: it is an SNF, ...; use --sampler snf
    """
    spec = _kind(kind)
    path = Path(path)
    payload = read_torch(path, spec.what, spec.remedy, error=ModelFileError)
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != spec.format:
        other = next((k for k in MODEL_KINDS.values() if k.format == found), None)
        if other is not None:
            raise ModelFileError(f"{path} is not a boltzflow {spec.title}: it is {other.noun}, not {spec.noun}; "
                                 f"use --sampler {other.sampler}")
        raise ModelFileError(f"{path} is not a boltzflow {spec.title} (found {found!r}; make one with "
                             f"`{spec.train}`)")
    if payload.get("version") != spec.version:
        raise ModelFileError(
            f"{spec.what} {path} has format version {payload.get('version')}, expected {spec.version}")
    missing = [key for key in _PARTS if not isinstance(payload.get(key), dict)]
    if missing:
        raise ModelFileError(f"{spec.what} {path} is incomplete (no {', '.join(missing)}); {spec.remedy}")
    return payload["config"], payload["state_dict"], payload["metadata"]


def load_state(build: Callable[[], _Module], state_dict: dict[str, Any], path: str | Path, kind: str) -> _Module:
    """Rebuild a module from a model file's configuration and load its tensors.

    Parameters
    ----------
    build : callable
        Makes the module from the file's configuration (``lambda: _from_config(config)``).
    state_dict : dict
        The file's tensors.
    path : path
        The file, for messages.
    kind : str
        Its kind (a key of :data:`MODEL_KINDS`).

    Returns
    -------
    torch.nn.Module
        The module ``build`` made, with the tensors loaded.

    Raises
    ------
    ModelFileError
        If the configuration cannot be built or the tensors do not fit it.

    Examples
    --------
    >>> import torch
    >>> load_state(lambda: torch.nn.Linear(2, 1), {"weight": torch.ones(1, 2), "bias": torch.zeros(1)},
    ...            "m.pt", "flow").weight
    Parameter containing:
    tensor([[1., 1.]], requires_grad=True)
    >>> load_state(lambda: torch.nn.Linear(2, 1), {}, "m.pt", "flow")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    boltzflow.flows.model_file.ModelFileError: model file m.pt does not match its configuration: ...
    """
    spec = _kind(kind)
    try:
        module = build()
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{spec.what} {path} does not match its configuration: {err}") from None
    return module


__all__ = ["MODEL_KINDS", "ModelFileError", "ModelKind", "load_model_file", "load_state", "save_model_file"]
