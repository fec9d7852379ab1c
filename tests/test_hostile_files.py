"""Damaged, hostile or mismatched model files and checkpoints: one clear error, never a silent load.

Every model-file format (coupling flow, continuous flow, SNF, LFEP map) and every checkpoint kind
(training checkpoints of ``train``/``train_continuous_flow``/``train_snf``; sampling checkpoints of
MD, MALA and the batched importance samplers) carries a SHA-256 of its contents: 64 flipped bytes
anywhere, or a truncated file, raise the format's ``ValueError`` subclass, a pickle that would run
code is refused without running it, a checkpoint of another architecture or with a key missing
names the problem, and a resumed run says so in its metadata.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openmm
import pytest
import torch

import boltzflow as bf
from boltzflow.cli import main
from boltzflow.energy.openmm_bridge import OpenMMEnergy
from boltzflow.flows import build_flow, load_model, save_model
from boltzflow.flows.continuous import build_continuous_flow, load_continuous_flow, save_continuous_flow
from boltzflow.flows.continuous_training import train_continuous_flow
from boltzflow.flows.lfep import build_temperature_map, load_lfep, save_lfep
from boltzflow.flows.models import ModelFileError
from boltzflow.flows.rigid import RigidBodySpec, random_uniform
from boltzflow.geometry.rigid_bodies import RigidBodyCoordinates
from boltzflow.flows.snf import build_snf, load_snf, save_snf, train_snf
from boltzflow.flows.training import TrainingCheckpointError, train
from boltzflow.integrity import ENVELOPE, UnverifiedFileWarning, payload_digest, read_torch, write_torch
from boltzflow.samplers.checkpoint import Checkpoint, CheckpointError

torch.set_num_threads(1)

OFFSETS = [0.0, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0]  # where the 64 flipped bytes start (share of the file)
TRUNCATIONS = [0.0, 0.1, 0.5, 0.9, 0.999]  # share of the file kept


def flip(path: Path, at: float, n: int = 64) -> None:
    """Invert ``n`` consecutive bytes starting at share ``at`` of the file (the last ``n`` for 1.0)."""
    data = bytearray(path.read_bytes())
    start = min(int(at * len(data)), len(data) - n)
    data[start : start + n] = bytes(b ^ 0xFF for b in data[start : start + n])
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float) -> None:
    path.write_bytes(path.read_bytes()[: int(keep * path.stat().st_size)])


class RunsCode:
    """Unpickling this object creates ``path`` (what a hostile file could do instead)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def double_well() -> bf.System:
    return bf.load_system("double_well_2d")


def _crystal_map():
    reference = np.array([[0.0, 0.0, -0.0065], [0.0757, 0.0, 0.052], [-0.0757, 0.0, 0.052], [0.0, 0.0, 0.0060]])
    centres = np.array([[0.15, 0.15, 0.15], [0.45, 0.45, 0.15], [0.45, 0.15, 0.45], [0.15, 0.45, 0.45]])
    spec = RigidBodySpec(reference, centres, np.array([0.6, 0.6, 0.6]), (False, False, False, True))
    q = random_uniform((4,), torch.Generator().manual_seed(3), torch.float64)
    lattice = RigidBodyCoordinates(reference).to_atoms(torch.as_tensor(centres), q).reshape(-1).numpy()
    frames = np.tile(lattice, (4, 1)) + 0.01 * np.random.default_rng(0).normal(size=(4, lattice.size))
    return build_temperature_map(spec, lattice, frames, 250.0, 100.0, n_layers=1, hidden=(8,), num_bins=4)


def _data(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 2))


# Each model-file format: write a small model to a path; load a path (for the given system).
MODEL_FORMATS: dict[str, tuple[Callable[[bf.System, Path], Path], Callable[[Path, bf.System], object]]] = {
    "flow": (lambda s, p: save_model(build_flow(s, n_layers=2, hidden=(8,), num_bins=4), p), load_model),
    "continuous": (lambda s, p: save_continuous_flow(build_continuous_flow(s, hidden=(8,), sigma_f_hidden=(4,),
                                                                             data=_data()), p),
                   load_continuous_flow),
    "snf": (lambda s, p: save_snf(build_snf(s, n_layers=1, n_blocks=1, n_steps=1, hidden=(8,), num_bins=4), p),
            load_snf),
    "lfep": (lambda s, p: save_lfep(_crystal_map(), p), lambda p, s: load_lfep(p)),
}


@pytest.fixture(scope="module", params=sorted(MODEL_FORMATS))
def model_file(request, double_well, tmp_path_factory) -> tuple[str, bytes]:
    """A format name and the bytes of one intact model file of that format."""
    save, _ = MODEL_FORMATS[request.param]
    path = save(double_well, tmp_path_factory.mktemp(request.param) / "model.pt")
    return request.param, path.read_bytes()


def _load(name: str, path: Path, system: bf.System) -> object:
    return MODEL_FORMATS[name][1](path, system)


def test_intact_model_files_load_without_warning(model_file, double_well, tmp_path):
    name, data = model_file
    (tmp_path / "m.pt").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _load(name, tmp_path / "m.pt", double_well)


@pytest.mark.parametrize("at", OFFSETS)
def test_flipped_bytes_in_a_model_file_are_noticed(model_file, double_well, tmp_path, at):
    name, data = model_file
    path = tmp_path / "m.pt"
    path.write_bytes(data)
    flip(path, at)
    with pytest.raises(ModelFileError, match="corrupted") as error:
        _load(name, path, double_well)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    if 0.15 <= at <= 0.85:  # inside the checksummed payload
        assert "checksum mismatch" in str(error.value) and "re-train" in str(error.value)


@pytest.mark.parametrize("keep", TRUNCATIONS)
def test_truncated_model_files_are_noticed(model_file, double_well, tmp_path, keep):
    name, data = model_file
    path = tmp_path / "m.pt"
    path.write_bytes(data)
    truncate(path, keep)
    with pytest.raises(ModelFileError, match="corrupted"):
        _load(name, path, double_well)


@pytest.mark.parametrize("layout", ["torch file", "inside a valid checksum", "plain pickle"])
def test_a_model_file_never_runs_code(model_file, double_well, tmp_path, layout):
    name, _ = model_file
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    hostile = {"format": "boltzflow-flow-model", "version": 2, "state_dict": RunsCode(marker)}
    if layout == "torch file":
        torch.save(hostile, path)
    elif layout == "plain pickle":
        path.write_bytes(pickle.dumps(hostile, protocol=2))
    else:  # an attacker can compute a checksum: the payload must be refused all the same
        buffer = io.BytesIO()
        torch.save(hostile, buffer)
        payload = buffer.getvalue()
        torch.save({"envelope": ENVELOPE, "sha256": payload_digest(payload),
                    "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, path)
    with pytest.raises(ModelFileError):
        _load(name, path, double_well)
    assert not marker.exists()


def test_model_files_without_checksum_still_load_with_a_warning(model_file, double_well, tmp_path):
    name, data = model_file
    (tmp_path / "new.pt").write_bytes(data)
    torch.save(read_torch(tmp_path / "new.pt", "model file", "-"), tmp_path / "old.pt")  # the previous layout
    with pytest.warns(UnverifiedFileWarning, match="no checksum"):
        old = _load(name, tmp_path / "old.pt", double_well)
    new = _load(name, tmp_path / "new.pt", double_well)
    for (key, a), (_, b) in zip(old.state_dict().items(), new.state_dict().items()):
        assert torch.equal(a, b), key


def test_shipped_model_files_carry_a_checksum():
    shipped = sorted(Path(__file__).resolve().parents[1].glob("data/*/flow.pt"))
    assert shipped
    for path in shipped:
        outer = torch.load(path, map_location="cpu", weights_only=True)
        assert outer["envelope"] == ENVELOPE, path
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert read_torch(path, "model file", "-")["format"] == "boltzflow-flow-model"


# Training checkpoints: each kind trains a tiny model for 2 iterations with a checkpoint.
def _train_flow(system: bf.System, path: Path, **architecture) -> None:
    options = {"n_layers": 2, "hidden": (8,), "num_bins": 4, "kind": "spline", **architecture}
    train(system, build_flow(system, **options), data=bf.SampleSet(_data(), np.zeros(64)), n_iterations=2,
          batch_size=16, progress=False, checkpoint=path)


def _train_continuous(system: bf.System, path: Path, **architecture) -> None:
    flow = build_continuous_flow(system, data=_data(), **{"hidden": (8,), "sigma_f_hidden": (4,), **architecture})
    train_continuous_flow(system, flow, _data(), n_iterations=2, batch_size=16, progress=False, checkpoint=path)


def _train_snf(system: bf.System, path: Path, **architecture) -> None:
    options = {"n_layers": 1, "n_blocks": 1, "n_steps": 1, "hidden": (8,), "num_bins": 4, **architecture}
    train_snf(build_snf(system, **options), n_iterations=2, batch_size=16, progress=False, checkpoint=path)


TRAINERS = {"train": _train_flow, "continuous": _train_continuous, "snf": _train_snf}
OTHER_ARCHITECTURES = [
    ("train", {"n_layers": 3}, "n_layers 2 vs 3"), ("train", {"hidden": (16,)}, "hidden"),
    ("train", {"num_bins": 6}, "num_bins 4 vs 6"), ("train", {"kind": "affine"}, "kind spline vs affine"),
    ("continuous", {"hidden": (16,)}, "hidden"), ("snf", {"n_layers": 2}, "n_layers 1 vs 2"),
    ("snf", {"hidden": (16,)}, "hidden"),
]


@pytest.fixture(scope="module", params=sorted(TRAINERS))
def training_checkpoint(request, double_well, tmp_path_factory) -> tuple[str, bytes]:
    path = tmp_path_factory.mktemp(request.param) / "checkpoint.pt"
    TRAINERS[request.param](double_well, path)
    return request.param, path.read_bytes()


def _resume(trainer: str, system: bf.System, path: Path, **architecture) -> None:
    TRAINERS[trainer](system, path, **architecture)


def test_an_intact_training_checkpoint_resumes(training_checkpoint, double_well, tmp_path):
    kind, data = training_checkpoint
    (tmp_path / "c.pt").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedFileWarning)
        _resume(kind, double_well, tmp_path / "c.pt")


@pytest.mark.parametrize("at", OFFSETS)
def test_flipped_bytes_in_a_training_checkpoint_are_noticed(training_checkpoint, double_well, tmp_path, at):
    kind, data = training_checkpoint
    path = tmp_path / "c.pt"
    path.write_bytes(data)
    flip(path, at)
    with pytest.raises(TrainingCheckpointError, match="corrupted") as error:
        _resume(kind, double_well, path)
    if 0.15 <= at <= 0.85:
        assert "checksum mismatch" in str(error.value) and "delete it" in str(error.value)


@pytest.mark.parametrize("keep", TRUNCATIONS[1:])
def test_truncated_training_checkpoints_are_noticed(training_checkpoint, double_well, tmp_path, keep):
    kind, data = training_checkpoint
    path = tmp_path / "c.pt"
    path.write_bytes(data)
    truncate(path, keep)
    with pytest.raises(TrainingCheckpointError, match="corrupted"):
        _resume(kind, double_well, path)


@pytest.mark.parametrize("kind, architecture, difference", OTHER_ARCHITECTURES)
def test_resuming_with_another_architecture_names_the_difference(double_well, tmp_path, kind, architecture,
                                                                  difference):
    path = tmp_path / "c.pt"
    TRAINERS[kind](double_well, path)
    with pytest.raises(TrainingCheckpointError, match="belongs to a different run") as error:
        _resume(kind, double_well, path, **architecture)
    assert difference in str(error.value) and "use another --out or delete it" in str(error.value)


def test_a_checkpoint_without_architecture_record_still_refuses_another_architecture(double_well, tmp_path):
    path = tmp_path / "c.pt"
    _train_flow(double_well, path)
    state = read_torch(path, "training checkpoint", "-")
    del state["config"]  # as written before the architecture was recorded
    write_torch(path, state)
    with pytest.raises(TrainingCheckpointError, match="different run .another architecture"):
        _train_flow(double_well, path, n_layers=3)


@pytest.mark.parametrize("key", ["optimizer", "run", "iteration", "flow", "rng", "history"])
def test_a_training_checkpoint_missing_a_part_is_refused(training_checkpoint, double_well, tmp_path, key):
    kind, data = training_checkpoint
    path = tmp_path / "c.pt"
    path.write_bytes(data)
    state = read_torch(path, "training checkpoint", "-")
    del state[key]
    write_torch(path, state)
    with pytest.raises(TrainingCheckpointError, match=f"incomplete .no {key}"):
        _resume(kind, double_well, path)


def test_a_training_checkpoint_with_an_unusable_optimizer_state_is_refused(training_checkpoint, double_well, tmp_path):
    kind, data = training_checkpoint
    path = tmp_path / "c.pt"
    path.write_bytes(data)
    state = read_torch(path, "training checkpoint", "-")
    state["optimizer"] = {"state": {}, "param_groups": []}
    write_torch(path, state)
    with pytest.raises(TrainingCheckpointError, match="optimiser, schedule or random state"):
        _resume(kind, double_well, path)


def test_a_hostile_training_checkpoint_never_runs_code(double_well, tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "c.pt"
    torch.save({"run": RunsCode(marker)}, path)
    with pytest.raises(TrainingCheckpointError, match="corrupted"):
        _train_flow(double_well, path)
    assert not marker.exists()


# Sampling checkpoints.
def _harmonic_md() -> bf.System:
    omm = openmm.System()
    force = openmm.CustomExternalForce("0.5*500*(x^2+y^2+z^2)")
    for i in range(3):
        omm.addParticle(12.0)
        force.addParticle(i, [])
    omm.addForce(force)
    energy = OpenMMEnergy(omm, temperature=300.0, platform="Reference")
    return bf.System(name="harmonic", energy=energy, temperature=300.0, x0=np.zeros(9), openmm_system=omm,
                     backend="openmm", units="nm, kJ/mol, K")


SAMPLING = {
    "md": dict(sampler="md", n=20, thin=10, equilibration_ps=0.1, minimize=False),
    "mala": dict(sampler="mala", n=40, n_chains=2, thin=2, warmup=10),
    "flow": dict(sampler="flow", n=40, batch_size=10),
}
PROGRESS = {"md": ("done", 20), "mala": ("step", 10 + 20 * 2), "flow": ("done", 40)}  # a finished run's


@pytest.fixture(scope="module")
def harmonic() -> bf.System:
    return _harmonic_md()


def _system(kind: str, double_well: bf.System, harmonic: bf.System) -> bf.System:
    return harmonic if kind == "md" else double_well


def _sample(kind: str, system: bf.System, path: Path) -> bf.SampleSet:
    options = dict(SAMPLING[kind])
    if kind == "flow":
        torch.manual_seed(0)
        options["model"] = build_flow(system, n_layers=1, hidden=(4,), num_bins=4)
    return bf.sample(system, seed=1, progress=False, checkpoint=path, checkpoint_seconds=0.0, **options)


@pytest.fixture(scope="module", params=sorted(SAMPLING))
def sampling_checkpoint(request, double_well, harmonic, tmp_path_factory) -> tuple[str, bytes, bf.SampleSet]:
    """A finished run's checkpoint (kept: a rerun of the same command resumes from it) and its samples."""
    path = tmp_path_factory.mktemp(request.param) / "checkpoint.npz"
    samples = _sample(request.param, _system(request.param, double_well, harmonic), path)
    return request.param, path.read_bytes(), samples


def test_a_fresh_run_records_that_it_was_not_resumed(sampling_checkpoint):
    _, _, samples = sampling_checkpoint
    assert samples.metadata["resumed"] is False and "resumed_from" not in samples.metadata


def test_a_resumed_run_records_where_it_resumed_from(sampling_checkpoint, double_well, harmonic, tmp_path):
    kind, data, first = sampling_checkpoint
    (tmp_path / "c.npz").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedFileWarning)
        again = _sample(kind, _system(kind, double_well, harmonic), tmp_path / "c.npz")
    assert np.array_equal(again.x, first.x)
    assert again.metadata["resumed"] is True
    progress = again.metadata["resumed_from"]
    key, value = PROGRESS[kind]
    assert progress[key] == value
    again.save(tmp_path / "samples")  # the metadata stays JSON-serialisable
    assert bf.SampleSet.load(tmp_path / "samples").metadata["resumed_from"] == progress


def test_md_resumed_metadata_names_the_frame(harmonic, tmp_path):
    samples = _sample("md", harmonic, tmp_path / "c.npz")
    assert samples.metadata["resumed"] is False
    again = _sample("md", harmonic, tmp_path / "c.npz")
    assert again.metadata["resumed_from"] == {"done": SAMPLING["md"]["n"]}


@pytest.mark.parametrize("at", OFFSETS)
def test_flipped_bytes_in_a_sampling_checkpoint_are_noticed(sampling_checkpoint, double_well, harmonic, tmp_path, at):
    kind, data, _ = sampling_checkpoint
    path = tmp_path / "c.npz"
    path.write_bytes(data)
    flip(path, at)
    with pytest.raises(CheckpointError, match="corrupted|lacks") as error:
        _sample(kind, _system(kind, double_well, harmonic), path)
    assert "\n" not in str(error.value) and "delete it" in str(error.value)


@pytest.mark.parametrize("keep", TRUNCATIONS[1:])
def test_truncated_sampling_checkpoints_are_noticed(sampling_checkpoint, double_well, harmonic, tmp_path, keep):
    kind, data, _ = sampling_checkpoint
    path = tmp_path / "c.npz"
    path.write_bytes(data)
    truncate(path, keep)
    with pytest.raises(CheckpointError, match="corrupted"):
        _sample(kind, _system(kind, double_well, harmonic), path)


def _arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def test_a_changed_array_in_a_sampling_checkpoint_is_noticed(sampling_checkpoint, double_well, harmonic, tmp_path):
    kind, data, _ = sampling_checkpoint
    arrays = _arrays(data)
    name = next(key for key in sorted(arrays) if key != "checkpoint_json" and arrays[key].dtype.kind == "f")
    arrays[name] = arrays[name] + 1e-12  # a hand edit: a valid npz, contents changed
    path = tmp_path / "c.npz"
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=f"checksum mismatch in '{name}'"):
        _sample(kind, _system(kind, double_well, harmonic), path)


@pytest.mark.parametrize("key", ["frames", "state_xml", "checkpoint_json"])
def test_an_md_checkpoint_missing_a_key_names_it(harmonic, tmp_path, key):
    path = tmp_path / "c.npz"
    _sample("md", harmonic, path)
    arrays = _arrays(path.read_bytes())
    del arrays[key]
    np.savez(path, **arrays)  # a hand-edited checkpoint
    with pytest.raises(CheckpointError, match=f"lacks .*'{key}'"):
        _sample("md", harmonic, path)


def test_a_checksum_free_md_checkpoint_missing_an_entry_names_it(harmonic, tmp_path):
    """A checkpoint of the previous layout (no checksum): loads with a warning; a missing entry is named."""
    path = tmp_path / "c.npz"
    _sample("md", harmonic, path)
    arrays = _arrays(path.read_bytes())
    header = json.loads(str(arrays["checkpoint_json"]))
    arrays["checkpoint_json"] = np.array(json.dumps({"run": header["run"], "info": {}}))
    del arrays["frames"]
    np.savez(path, **arrays)
    with pytest.warns(UnverifiedFileWarning), pytest.raises(CheckpointError, match="lacks the entry 'done'"):
        _sample("md", harmonic, path)


def test_a_sampling_checkpoint_of_another_run_names_the_difference(double_well, tmp_path):
    path = tmp_path / "c.npz"
    _sample("mala", double_well, path)
    with pytest.raises(CheckpointError, match="different run .seed 1 vs 2"):
        bf.sample(double_well, seed=2, progress=False, checkpoint=path, **SAMPLING["mala"])


def test_checkpoint_load_and_save_round_trip(tmp_path):
    ckpt = Checkpoint(tmp_path / "c.npz", run={"seed": 0})
    ckpt.save({"x": np.arange(3.0), "xml": np.array("<State/>")}, {"step": 7, "rng": {"state": [1, 2]}})
    fresh = Checkpoint(tmp_path / "c.npz", run={"seed": 0})
    assert fresh.resume_metadata() == {"resumed": False}
    arrays, info = fresh.load()
    assert np.array_equal(arrays["x"], np.arange(3.0)) and str(arrays["xml"]) == "<State/>" and info["step"] == 7
    assert fresh.resume_metadata() == {"resumed": True, "resumed_from": {"step": 7}}
    with pytest.raises(CheckpointError, match="lacks the array 'y'"):
        arrays["y"]
    assert os.path.exists(tmp_path / "c.npz")


def test_cli_rerun_with_another_architecture_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = ["train", "double_well_2d", "--out", str(run), "--iterations", "3", "--quiet", "--threads", "1",
            "--hidden", "8", "--bins", "4"]

    def killed(*_: object) -> None:  # killed after the last checkpoint, before the model was written
        raise KeyboardInterrupt

    monkeypatch.setattr("boltzflow.flows.models.save_model", killed)
    assert main(args + ["--layers", "4"]) == 130
    assert (run / "checkpoint.pt").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args + ["--layers", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "belongs to a different run (n_layers 4 vs 6); use another --out or delete it" in err
    flip(run / "checkpoint.pt", 0.5)
    assert main(args + ["--layers", "4"]) == 2
    assert "is corrupted (checksum mismatch)" in capsys.readouterr().err


def test_cli_sampling_with_a_flipped_model_file_is_one_line(double_well, tmp_path, capsys):
    path = MODEL_FORMATS["flow"][0](double_well, tmp_path / "model.pt")
    flip(path, 0.5)
    assert main(["sample", "double_well_2d", "--sampler", "flow", "--model", str(path), "--n", "10",
                 "--out", str(tmp_path / "x"), "--quiet", "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is corrupted (checksum mismatch); re-train or re-download it" in err


@pytest.mark.parametrize("key", ["config", "state_dict"])
def test_a_model_file_missing_a_part_is_refused(model_file, double_well, tmp_path, key):
    name, data = model_file
    path = tmp_path / "m.pt"
    path.write_bytes(data)
    state = read_torch(path, "model file", "-")
    del state[key]
    write_torch(path, state)  # a valid checksum over an incomplete model
    with pytest.raises(ModelFileError):
        _load(name, path, double_well)


def test_a_sampling_checkpoint_never_runs_code(double_well, tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "c.npz"
    _sample("mala", double_well, path)
    arrays = _arrays(path.read_bytes())
    arrays["x"] = np.array([RunsCode(marker)], dtype=object)  # saved as a pickle inside the npz
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="corrupted"):
        _sample("mala", double_well, path)
    assert not marker.exists()
