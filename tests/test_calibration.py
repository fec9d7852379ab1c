"""A reduced calibration benchmark (benchmarks/calibration.py): flow, IMH and i-SIR on four_wells_2d.

A small spline flow is trained on the benchmark's mis-weighted data (equal MALA data in each of the
four wells), then each sampler runs over 10 seeds at the ``--quick`` budget. Over every unflagged
estimate of P(A), ⟨u⟩, ⟨a⟩, ΔF(B−A) (and log Z for the flow) the pooled ±2σ coverage and mean z
must be those of honest error bars. The bounds have margin for other CPUs' random streams: with
about 120 estimates an honest coverage of ~95 % has a standard error of ~2 %, the pooled mean z
one of ~0.1 (seeds correlate the quantities of one run, so more in practice). The same results
with every error divided by 3 must fail both bounds, so the test can fail.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import boltzflow as bf

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py"
SAMPLERS = ["flow", "imh", "isir"]
MIN_COVERAGE, MAX_MEAN_Z = 0.80, 0.5


@pytest.fixture(scope="module")
def calibration():
    spec = importlib.util.spec_from_file_location("calibration_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _pooled(rows: list[dict]) -> tuple[float, float, int]:
    """Coverage and mean z over every unflagged estimate of ``rows`` (weighted by their counts)."""
    n = sum(r["unflagged"]["n"] for r in rows)
    coverage = sum(r["unflagged"]["coverage"] * r["unflagged"]["n"] for r in rows if r["unflagged"]["n"]) / n
    mean_z = sum(r["unflagged"]["mean_z"] * r["unflagged"]["n"] for r in rows
                 if r["unflagged"]["n"] and np.isfinite(r["unflagged"]["mean_z"])) / n
    return coverage, mean_z, n


def test_reduced_calibration(calibration, tmp_path: Path) -> None:
    results, rows = calibration.run_benchmark(tmp_path, ["four_wells_2d"], SAMPLERS, seeds=10, quick=True,
                                              progress=False)
    assert not [r for r in results if "failure" in r]
    assert {r["sampler"] for r in rows} == set(SAMPLERS)
    assert (tmp_path / "results.json").exists() and (tmp_path / "models" / "four_wells_2d" / "model.pt").exists()
    coverage, mean_z, n = _pooled(rows)
    assert n >= 100  # most estimates are unflagged: the flow covers all four wells
    assert coverage >= MIN_COVERAGE, calibration.markdown_table(rows)
    assert abs(mean_z) <= MAX_MEAN_Z, calibration.markdown_table(rows)

    target = calibration.TARGETS["four_wells_2d"]
    exact = {"four_wells_2d": calibration.exact_answers(target, bf.load_system(target.system))}
    shrunk = calibration.calibration_rows(results, exact, error_scale=1 / 3)
    coverage_shrunk, mean_z_shrunk, _ = _pooled(shrunk)
    assert coverage_shrunk < MIN_COVERAGE or abs(mean_z_shrunk) > MAX_MEAN_Z

    # the cache: a second call reruns nothing and gives the same rows
    again, rows_again = calibration.run_benchmark(tmp_path, ["four_wells_2d"], SAMPLERS, seeds=10, quick=True,
                                                  progress=False)
    assert again == results and json.dumps(rows_again) == json.dumps(rows)
