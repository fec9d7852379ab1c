"""The boltzflow command line: systems, sample, estimate, and its error messages."""

import json

import numpy as np
import pytest

from boltzflow import SampleSet
from boltzflow.cli import main


def test_systems_lists_builtins(capsys):
    assert main(["systems"]) == 0
    out = capsys.readouterr().out
    for name in ("double_well_2d", "dw4", "lj13", "lj55", "alanine_dipeptide_implicit"):
        assert name in out
    assert main(["systems", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["dim"] for r in rows}["lj13"] == 39


def test_sample_then_estimate(tmp_path, capsys):
    run = tmp_path / "dw"
    code = main(["sample", "double_well_2d", "--n", "400", "--seed", "1", "--out", str(run), "--quiet",
                 "-o", "n_chains=8", "-o", "warmup=200"])
    assert code == 0
    assert (run / "samples.npz").exists() and (run / "overview.png").exists()
    assert not (run / "checkpoint.npz").exists()
    samples = SampleSet.load(run)
    assert len(samples) == 400 and samples.metadata["seed"] == 1
    capsys.readouterr()
    assert main(["estimate", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    text = json.dumps(summary)
    assert "x1" in text and "ess" in text.lower()
    assert main(["estimate", str(run)]) == 0
    assert "x1" in capsys.readouterr().out


def test_errors_are_one_line_messages(tmp_path, capsys):
    assert main(["sample", "lj31", "--out", str(tmp_path / "a")]) == 2
    assert "unknown system 'lj31'" in capsys.readouterr().err
    assert main(["sample", "dw4", "--out", str(tmp_path / "b"), "-o", "nonsense"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["sample", "dw4", "--n", "10", "--out", str(tmp_path / "c"), "-o", "frobnicate=3"]) == 2
    assert "frobnicate" in capsys.readouterr().err
    assert main(["estimate", str(tmp_path / "nowhere")]) == 2
    assert "error" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "samples.npz").write_bytes(b"corrupted")
    assert main(["estimate", str(tmp_path / "bad")]) == 2
    assert "corrupted" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "dw4", "--out", str(tmp_path / "d"), "--sampler", "gibbs"])


def test_existing_results_are_not_overwritten_without_force(tmp_path, capsys):
    run = tmp_path / "r"
    args = ["sample", "dw4", "--n", "32", "--out", str(run), "--quiet", "--no-plot", "-o", "warmup=10"]
    assert main(args) == 0
    before = SampleSet.load(run).x.copy()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert np.array_equal(SampleSet.load(run).x, before)
    assert main(args + ["--force", "--seed", "5"]) == 0
    assert not np.array_equal(SampleSet.load(run).x, before)
