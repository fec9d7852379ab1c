"""SampleSet: the contract between samplers and estimates, and its files."""

import json

import numpy as np
import pytest

from boltzflow import SampleSet
from boltzflow.samples import SampleSetError


def _samples(n=20, seed=0):
    rng = np.random.default_rng(seed)
    energies = rng.normal(size=n)
    energies[3] = np.inf
    return SampleSet(
        x=rng.normal(size=(n, 4)), energies=energies, log_weights=rng.normal(size=n),
        chain=np.arange(n) % 2, time=np.arange(n) * 0.5, metadata={"system": "toy", "seed": 1},
    )


def test_failed_energies_get_zero_weight_and_are_counted():
    s = _samples()
    assert s.n_failed == 1 and s.metadata["n_failed"] == 1
    assert s.log_weights[3] == -np.inf and np.isfinite(np.delete(s.log_weights, 3)).all()


def test_inconsistent_arrays_are_rejected():
    with pytest.raises(SampleSetError, match="energies has 3 entries for 4 samples"):
        SampleSet(x=np.zeros((4, 2)), energies=np.zeros(3))
    with pytest.raises(SampleSetError, match="NaN"):
        SampleSet(x=np.zeros((2, 2)), energies=np.array([0.0, np.nan]))
    with pytest.raises(SampleSetError, match="log_weights"):
        SampleSet(x=np.zeros((2, 2)), energies=np.zeros(2), log_weights=np.array([0.0, np.inf]))
    with pytest.raises(SampleSetError, match="JSON"):
        SampleSet(x=np.zeros((2, 2)), energies=np.zeros(2), metadata={"f": object()})


def test_save_load_roundtrip_and_no_temporary_files(tmp_path):
    s = _samples()
    path = s.save(tmp_path / "run")
    assert path == tmp_path / "run" / "samples.npz"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["samples.json", "samples.npz"]
    t = SampleSet.load(tmp_path / "run")
    for name in ("x", "energies", "log_weights", "chain", "time"):
        assert np.array_equal(getattr(s, name), getattr(t, name))
    assert t.metadata == s.metadata
    assert json.loads((tmp_path / "run" / "samples.json").read_text())["system"] == "toy"


def test_corrupted_truncated_and_missing_files_raise_clear_errors(tmp_path):
    path = _samples().save(tmp_path / "s.npz")
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleSetError, match="corrupted or truncated"):
        SampleSet.load(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(SampleSetError):
        SampleSet.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(SampleSetError, match="not a boltzflow sample file"):
        SampleSet.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="holds no samples.npz"):
        SampleSet.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        SampleSet.load(tmp_path / "nothing.npz")


def test_subset_and_concatenate():
    s = _samples()
    first, second = s[:8], s[8:]
    assert len(first) == 8 and first.n_failed == 1 and second.n_failed == 0
    joined = SampleSet.concatenate([first, second])
    assert np.array_equal(joined.x, s.x) and np.array_equal(joined.chain, s.chain)
    assert len(s[s.energies < 0]) == int((s.energies < 0).sum())


def test_trajectory_roundtrip_with_mdtraj(tmp_path):
    import mdtraj as md

    top = md.Topology()
    residue = top.add_residue("MOL", top.add_chain())
    for i in range(3):
        top.add_atom(f"C{i}", md.element.carbon, residue)
    x = np.random.default_rng(0).normal(size=(5, 9))
    s = SampleSet(x=x, energies=np.zeros(5), time=np.arange(5.0))
    for suffix in (".dcd", ".h5", ".pdb"):
        path = s.save_trajectory(tmp_path / f"t{suffix}", top)
        traj = md.load(str(path), top=top) if suffix == ".dcd" else md.load(str(path))
        assert np.allclose(traj.xyz.reshape(5, 9), x, atol=1e-3)
    with pytest.raises(SampleSetError, match="unsupported trajectory format"):
        s.save_trajectory(tmp_path / "t.txt", top)
    with pytest.raises(SampleSetError, match="needs a molecular topology"):
        s.save_trajectory(tmp_path / "t.dcd", None)
