"""The boltzflow command line: systems, sample, estimate, and its error messages."""

import json
import subprocess
import sys

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
    code = main(["sample", "double_well_2d", "--sampler", "md", "--n", "400", "--seed", "1", "--out", str(run),
                 "--quiet", "-o", "n_chains=8", "-o", "warmup=200"])
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
    args = ["sample", "dw4", "--sampler", "md", "--n", "32", "--out", str(run), "--quiet", "--no-plot",
            "-o", "warmup=10"]
    assert main(args) == 0
    before = SampleSet.load(run).x.copy()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert np.array_equal(SampleSet.load(run).x, before)
    assert main(args + ["--force", "--seed", "5"]) == 0
    assert not np.array_equal(SampleSet.load(run).x, before)


def test_train_then_sample_with_the_flow(tmp_path, capsys):
    run = tmp_path / "flow"
    assert main(["train", "double_well_2d", "--out", str(run), "--kind", "affine", "--layers", "4",
                 "--hidden", "16", "16", "--iterations", "60", "--quiet", "--threads", "1"]) == 0
    assert (run / "model.pt").exists() and not (run / "checkpoint.pt").exists()
    assert main(["train", "double_well_2d", "--out", str(run), "--iterations", "5", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    samples_dir = tmp_path / "samples"
    assert main(["sample", "double_well_2d", "--sampler", "flow", "--model", str(run / "model.pt"), "--n", "500",
                 "--out", str(samples_dir), "--quiet", "--no-plot"]) == 0
    samples = SampleSet.load(samples_dir)
    assert samples.metadata["sampler"] == "flow" and samples.is_weighted
    capsys.readouterr()
    assert main(["estimate", str(samples_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "log_z" in summary and summary["n"] == 500
    (run / "bad.pt").write_bytes(b"junk")
    assert main(["sample", "double_well_2d", "--sampler", "flow", "--model", str(run / "bad.pt"), "--n", "10",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_default_sampler_uses_the_shipped_flow_and_estimate_compares_with_the_reference(tmp_path, capsys):
    run = tmp_path / "auto"
    assert main(["sample", "double_well_2d", "--n", "3000", "--out", str(run), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "sampler: flow (shipped trained model)" in out
    samples = SampleSet.load(run)
    assert samples.metadata["sampler"] == "flow" and samples.metadata["model"].endswith("flow.pt")
    assert main(["estimate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "against the project's reference" in out and "exact (quadrature)" in out
    assert main(["estimate", str(run), "--json"]) == 0
    rows = {r["quantity"]: r for r in json.loads(capsys.readouterr().out)["reference"]}
    delta_f = rows["Delta F B-A (kT)"]
    assert delta_f["reference"] == pytest.approx(-1.6906, abs=1e-3)
    assert abs(delta_f["z"]) < 4  # the shipped flow's reweighted ΔF agrees with quadrature
    # --model is only for the flow sampler; a system without shipped model falls back to MD
    assert main(["sample", "double_well_2d", "--sampler", "mala", "--model", "x.pt", "--out", str(tmp_path / "m"),
                 "--quiet"]) == 2
    assert "--model is for the flow-based samplers" in capsys.readouterr().err
    assert main(["sample", "lj13", "--n", "20", "--out", str(tmp_path / "lj"), "--no-plot", "-o", "warmup=10"]) == 0
    assert "sampler: md" in capsys.readouterr().out


def test_estimate_needs_neither_torch_nor_openmm(tmp_path, capsys):
    run = tmp_path / "dw"
    assert main(["sample", "double_well_2d", "--sampler", "mala", "--n", "200", "--out", str(run), "--quiet",
                 "--no-plot", "-o", "n_chains=4", "-o", "warmup=50"]) == 0
    capsys.readouterr()
    assert main(["estimate", str(run)]) == 0
    in_process = capsys.readouterr().out
    assert "Delta F B-A" in in_process  # the declared states were found
    script = ("import sys, boltzflow.cli as cli; code = cli.main(['estimate', sys.argv[1]]); "
              "heavy = sorted({'torch', 'openmm', 'boltzflow.systems.system'} & set(sys.modules)); "
              "assert not heavy, heavy; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, str(run)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == in_process


def test_sampler_choices_are_the_registered_samplers():
    from boltzflow.cli import build_parser
    from boltzflow.samplers import SAMPLERS

    parser = build_parser()
    for name in ["auto", *SAMPLERS]:
        assert parser.parse_args(["sample", "dw4", "--out", "run", "--sampler", name]).sampler == name
    for name in SAMPLERS:
        assert callable(SAMPLERS[name]), name


def test_file_errors_are_value_errors_so_main_reports_them_in_one_line():
    from boltzflow.flows.models import ModelFileError
    from boltzflow.flows.training import TrainingCheckpointError
    from boltzflow.samplers.checkpoint import CheckpointError
    from boltzflow.samples import SampleSetError

    for error in (CheckpointError, ModelFileError, SampleSetError, TrainingCheckpointError):
        assert issubclass(error, ValueError), error
