"""The examples run and their estimates agree with their exact answers within the reported errors."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_energy_example_matches_quadrature():
    results = _load("custom_energy").main(n=6000, seed=1)
    for name, (value, error, exact) in results.items():
        assert 0 < error < 0.1, name
        assert abs(value - exact) < 4 * error, (name, value, error, exact)


def test_alanine_example_runs_and_is_honest_about_short_md(capsys):
    delta_f = _load("alanine_free_energy").main("alanine_dipeptide_vacuum", ns=0.05, seed=0)
    out = capsys.readouterr().out
    assert "ΔF(φ>0 − φ<0)" in out and "reference (umbrella MD" in out and "KL(reference" in out
    assert not delta_f.reliable  # 50 ps of MD never reaches φ > 0


def test_chignolin_flow_perturbation_example_runs_end_to_end(tmp_path, capsys):
    """Plumbing only (a tiny flow on the shipped MD frames): three runs, the MD row, the plot; the
    orientation prior leaves chignolin's own energy as the ⟨u⟩ observable."""
    data = _load("chignolin_flow_perturbation")
    summary = data.main(out=tmp_path, data=EXAMPLES.parent / "data" / "chignolin_implicit", coordinates="cartesian", kappa=100.0, hidden=[16],
                        iterations=20, ode_steps=2, n=16, n_temperatures=3, mcmc_steps=1, n_replicas=2, k_max=10,
                        k_min=2, seed=0, batch_size=16, gradient_steps=1)
    assert [row["run"] for row in summary["runs"]] == ["flow as drawn (unweighted)", *data.RUNS]
    assert summary["reference"]["run"] == "MD reference" and set(summary["runs"][2]["z"]) == set(data.QUANTITIES)
    assert (tmp_path / "chignolin_fp.png").stat().st_size > 10_000 and (tmp_path / "cnf.pt").exists()
    import boltzflow as bf

    hutchinson = bf.SampleSet.load(tmp_path / "fp-smc-hutchinson")
    assert hutchinson.metadata["estimator"] == "hutchinson" and hutchinson.metadata["normalized_proposal"] is False
    assert len(hutchinson.metadata["mala_acceptance_rates"]) == 3  # gradient moves through the orientation prior too
    with pytest.raises(SystemExit, match="other settings"):  # a stored run is never silently reused for new settings
        data.main(out=tmp_path, data=tmp_path, coordinates="cartesian", kappa=100.0, hidden=[16], iterations=20,
                  ode_steps=2, n=16, n_temperatures=4, mcmc_steps=1, n_replicas=2, k_max=10, k_min=2, seed=0,
                  batch_size=16)
    system = bf.load_system("chignolin_implicit")
    _, prior = data.orientation_target(system, 100.0)
    u = system.energy.evaluate(hutchinson.x, need_gradient=False).energy
    ok = np.isfinite(u)
    assert ok.sum() > 0  # the sampled target is u + u_R
    np.testing.assert_allclose(hutchinson.energies[ok] - u[ok], prior.evaluate(hutchinson.x[ok], need_gradient=False).energy,
                               rtol=1e-9, atol=1e-6)
    assert "MD reference" in capsys.readouterr().out
