"""Samples, estimates and systems checked against each other: hostile or broken inputs give a clear
error naming the problem, or a result flagged unreliable -- never a confident wrong number (issue 17)."""

import json
import shutil
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from boltzflow import SampleSet
from boltzflow.cli import main
from boltzflow.estimate import LowESSWarning, check_samples, expectation, move_fractions, summarize
from boltzflow.estimate.report import format_comparison, reference_comparison
from boltzflow.estimate.uncertainty import CONSTANT_CHAINS
from boltzflow.samples import SampleSetError
from boltzflow.systems import UnknownSystemError, declared_system, load_system
from boltzflow.systems.registry import AmbiguousSystemError, builtin_systems_dir, list_systems

X1 = {"x1": lambda x: x[:, 0]}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowESSWarning)
        return fn(*args, **kwargs)


def _error_line(capsys, argv):
    """Run the CLI; it must exit 2 with exactly one line on stderr, returned."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------- 1. chains that never move
def _chains(kind, n_chains=4, length=200, seed=0):
    """Unweighted correlated chains (MCMC-like) of a 1D standard normal target."""
    rng = np.random.default_rng(seed)
    x = np.empty((n_chains, length))
    x[:, 0] = rng.normal(size=n_chains)
    for t in range(1, length):  # AR(1) chains that move at every step
        x[:, t] = 0.5 * x[:, t - 1] + rng.normal(scale=np.sqrt(0.75), size=n_chains)
    if kind == "frozen":  # every proposal rejected: each chain repeats its start
        x[:] = x[:, :1]
    elif kind == "frozen_same_start":  # all chains from the same x0, as `sample --sampler mala` does
        x[:] = 1.3
    elif kind == "barely":  # 1 move in 200 steps per chain: 0.5 % of steps
        x[:, :100] = x[:, :1]
        x[:, 100:] = x[:, 100:101]
    elif kind == "one_stuck":
        x[0] = x[0, 0]
    metadata = {"correlated": True, "system": "toy"}
    return SampleSet(x.reshape(-1, 1), 0.5 * x.reshape(-1) ** 2, chain=np.repeat(np.arange(n_chains), length),
                     time=np.tile(np.arange(length), n_chains), metadata=metadata)


@pytest.mark.parametrize("kind, acceptance, message", [
    ("frozen", 0.0, "no chain ever moves: each of the 4 chains repeats its first configuration (recorded "
                    "acceptance rate 0.00%)"),
    ("frozen", None, "no chain ever moves: each of the 4 chains repeats its first configuration, so"),
    ("frozen_same_start", 0.0, "no chain ever moves"),
    ("barely", 0.004, "the chains barely move: 0.50% of stored steps change the configuration (< 1%) "
                      "(recorded acceptance rate 0.40%)"),
    ("one_stuck", None, "1 of 4 chains never move"),
])
def test_chains_that_do_not_move_flag_every_estimate(kind, acceptance, message):
    samples = _chains(kind)
    if acceptance is not None:
        samples.metadata["acceptance_rate"] = acceptance
    with pytest.warns(LowESSWarning):
        summary = summarize(samples, X1, states=(lambda x: x[:, 0] < 0, lambda x: x[:, 0] >= 0))
    estimates = [summary["mean_energy"], summary["delta_f"], *summary["observables"].values()]
    for est in estimates:
        assert not est["reliable"] and est["message"].startswith(message), est["message"]
    assert summary["chain_diagnostics"]["move_fraction"] <= 0.75


def test_moving_chains_are_not_flagged():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowESSWarning)
        summary = summarize(_chains("moving"), X1)
    assert summary["mean_energy"]["reliable"] and summary["observables"]["x1"]["reliable"]
    assert summary["chain_diagnostics"]["move_fraction"] == 1.0


@pytest.mark.parametrize("chain", [None, np.repeat([0, 1, 2], 20)])
def test_a_zero_error_from_correlated_chains_is_never_reliable(chain):
    samples = SampleSet(np.full((60, 1), 2.5), np.full(60, 3.0), chain=chain, metadata={"correlated": True})
    with pytest.warns(LowESSWarning, match="no error bar"):
        est = expectation(samples, samples.energies)
    assert est.value == pytest.approx(3.0) and est.error == 0.0
    assert not est.reliable and est.message == f"expectation: {CONSTANT_CHAINS}" and est.ess == pytest.approx(1.0)


def test_a_constant_observable_of_independent_samples_keeps_its_exact_zero_error():
    samples = SampleSet(np.random.default_rng(0).normal(size=(60, 2)), np.zeros(60))
    est = expectation(samples, np.full(60, 7.0))
    assert est.reliable and est.error == 0.0 and est.value == pytest.approx(7.0)


def test_move_fractions_read_the_coordinates_in_time_order():
    x = np.array([[0.0], [1.0], [1.0], [2.0]])
    assert move_fractions(SampleSet(x, np.zeros(4), time=[0, 2, 1, 3])).tolist() == [2 / 3]
    assert np.isnan(move_fractions(SampleSet(x[:1], np.zeros(1)))).all()


def test_the_reference_comparison_of_an_unreliable_estimate_says_so():
    summary = _quiet(summarize, _chains("frozen_same_start"))  # <u> = 0.845 ± 0 exactly
    rows = reference_comparison(summary, {"exact": {"mean_energy": 0.5}})
    assert not rows[0]["reliable"] and np.isnan(rows[0]["z"])
    assert "no comparison: this run's estimate is UNRELIABLE" in format_comparison(rows)
    summary = _quiet(summarize, _chains("frozen"))  # chains frozen at different starts: a nonzero error bar
    rows = reference_comparison(summary, {"md": {"mean_energy": {"value": 0.5, "error": 0.1, "reliable": True}}})
    assert not rows[0]["reliable"] and "σ, but this run's estimate is UNRELIABLE" in format_comparison(rows)


def test_cli_estimate_of_a_mala_run_that_never_moved(tmp_path, capsys):
    run = tmp_path / "R"
    assert main(["sample", "double_well_2d", "--sampler", "mala", "--n", "200", "-o", "warmup=0", "-o",
                 "step_size=100", "--out", str(run), "--quiet"]) == 0
    assert SampleSet.load(run).metadata["acceptance_rate"] == 0.0
    capsys.readouterr()
    assert _quiet(main, ["estimate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "!! <u> (kT)" in out and "UNRELIABLE: no chain ever moves" in out and "!! chains" in out
    assert "σ" not in out and "no comparison: this run's estimate is UNRELIABLE" in out
    assert _quiet(main, ["estimate", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert not summary["mean_energy"]["reliable"]
    assert all(not row["reliable"] for row in summary["reference"])


# --------------------------------------------------------------------------- 2. samples against the system
@pytest.mark.parametrize("system, columns, dim", [
    ("double_well_2d", 66, 2), ("double_well_2d", 1, 2), ("double_well_2d", 3, 2),
    ("alanine_dipeptide_implicit", 60, 66), ("alanine_dipeptide_implicit", 67, 66), ("lj13", 38, 39),
])
def test_samples_with_the_wrong_number_of_coordinates_are_refused(tmp_path, capsys, system, columns, dim):
    message = f"samples have {columns} coordinates per frame but system '{system}' has {dim}"
    samples = SampleSet(np.random.default_rng(0).normal(size=(50, columns)), np.zeros(50),
                        metadata={"system": system, "temperature": 1.0})
    with pytest.raises(SampleSetError, match=message):
        check_samples(samples, declared_system(system))
    with pytest.raises(SampleSetError, match=message):
        summarize(samples, system=declared_system(system))
    samples.save(tmp_path / "run")
    assert _error_line(capsys, ["estimate", str(tmp_path / "run")]) == f"boltzflow estimate: error: {message}"


def test_samples_of_another_system_are_refused():
    samples = SampleSet(np.zeros((10, 2)), np.zeros(10), metadata={"system": "four_wells_2d"})
    with pytest.raises(SampleSetError, match="samples are of system 'four_wells_2d'.*not of system 'double_well_2d'"):
        summarize(samples, system=declared_system("double_well_2d"))


def test_a_built_system_is_checked_too_and_gives_the_default_observables_and_states():
    system = load_system("double_well_2d")
    with pytest.raises(SampleSetError, match="samples have 4 coordinates per frame but system 'double_well_2d' has 2"):
        check_samples(SampleSet(np.zeros((5, 4)), np.zeros(5)), system)
    x = np.random.default_rng(1).normal(size=(400, 2))
    summary = _quiet(summarize, SampleSet(x, np.zeros(400), metadata={"system": "double_well_2d"}), system=system)
    assert set(summary["observables"]) == {"x1", "x2"} and "delta_f" in summary


@pytest.mark.parametrize("info", list_systems(), ids=lambda info: info.name)
def test_the_declared_dim_is_the_definitions(info):
    declared = declared_system(info.name)
    assert declared is None or declared.dim == info.dim


# --------------------------------------------------------------------------- 3. non-finite coordinates
@pytest.mark.parametrize("rows, value", [([3], np.nan), ([3], np.inf), ([0, 5, 9], -np.inf), ([2, 4], np.nan),
                                         (list(range(10)), np.nan)])
def test_rows_with_non_finite_coordinates_are_failed_samples(tmp_path, rows, value):
    x = np.random.default_rng(0).normal(size=(10, 2))
    x[rows, 1] = value
    energies = np.ones(10)  # finite energies written by a broken sampler or by hand
    failed = np.zeros(10, dtype=bool)
    failed[rows] = True
    np.savez(tmp_path / "hand.npz", x=x, energies=energies, log_weights=np.zeros(10),
             metadata_json=np.array(json.dumps({"format_version": 1})))
    for samples in (SampleSet(x, energies), SampleSet.load(tmp_path / "hand.npz")):
        assert samples.n_failed == len(rows)
        assert np.array_equal(np.isinf(samples.energies), failed)
        assert np.array_equal(np.isneginf(samples.log_weights), failed)
        est = _quiet(expectation, samples, X1["x1"])
        if len(rows) == 10:
            assert np.isnan(est.value) and not est.reliable
        else:
            assert est.value == pytest.approx(x[~failed, 0].mean())


# --------------------------------------------------------------------------- 4. corrupt sample files
def _arrays():
    return {"x": np.zeros((5, 2)), "energies": np.zeros(5), "log_weights": np.zeros(5),
            "metadata_json": np.array(json.dumps({"format_version": 1, "system": "double_well_2d"}))}


CORRUPT = {
    "metadata a list": ({"metadata_json": np.array("[1, 2]")}, "metadata is corrupted: expected a JSON object, got "
                                                               "list"),
    "metadata a number": ({"metadata_json": np.array("5")}, "expected a JSON object, got int"),
    "metadata not a string": ({"metadata_json": np.array([1.0, 2.0])},
                              "metadata is corrupted: expected one JSON string"),
    "metadata not JSON": ({"metadata_json": np.array("{oops")}, "metadata is corrupted"),
    "no version": ({"metadata_json": np.array("{}")}, "unsupported sample file version None"),
    "missing x": ({"x": None}, r"missing \['x'\]"),
    "missing energies": ({"energies": None}, r"missing \['energies'\]"),
    "missing log_weights": ({"log_weights": None}, r"missing \['log_weights'\]"),
    "unexpected array": ({"weights": np.zeros(5)}, r"unexpected arrays \['weights'\]"),
    "x strings": ({"x": np.array([["a", "b"]] * 5)}, "x must hold real numbers, got dtype <U1"),
    "x 3d": ({"x": np.zeros((5, 2, 2))}, r"x must have shape \(N, D\)"),
    "x a scalar": ({"x": np.array(1.0)}, r"x must have shape \(N, D\)"),
    "energies complex": ({"energies": np.zeros(5, dtype=complex)}, "energies must hold float64 numbers"),
    "energies too short": ({"energies": np.zeros(4)}, "energies has 4 entries for 5 samples"),
    "log_weights too long": ({"log_weights": np.zeros(6)}, "log_weights has 6 entries for 5 samples"),
    "chain too short": ({"chain": np.zeros(3, dtype=int)}, "chain has 3 entries for 5 samples"),
    "chain fractional": ({"chain": np.full(5, 0.5)}, "chain must hold whole numbers"),
    "time not finite": ({"time": np.array([0.0, 1.0, np.nan, 3.0, 4.0])}, "time must be finite"),
    "energies NaN": ({"energies": np.array([0.0, np.nan, 0.0, 0.0, 0.0])}, "energies contain NaN"),
    "flag a string": ({"metadata_json": np.array('{"format_version": 1, "correlated": "no"}')},
                      r"metadata\['correlated'\] must be true or false"),
    "object array": ({"x": np.array([None] * 5, dtype=object)}, "not a readable sample file"),
}


@pytest.mark.parametrize("name", CORRUPT)
def test_corrupt_sample_files_give_a_clear_error(tmp_path, capsys, name):
    changes, message = CORRUPT[name]
    arrays = {k: v for k, v in {**_arrays(), **changes}.items() if v is not None}
    path = tmp_path / "run" / "samples.npz"
    path.parent.mkdir()
    np.savez(path, **arrays, allow_pickle=True) if name == "object array" else np.savez(path, **arrays)
    with pytest.raises(SampleSetError, match=message) as info:
        SampleSet.load(path)
    assert str(path) in str(info.value)
    err = _error_line(capsys, ["estimate", str(path.parent)])
    assert err.startswith("boltzflow estimate: error: ") and str(path) in err


# --------------------------------------------------------------------------- 5. broken system folders
DW = """
name = "my_well"
type = "double_well"
temperature = 1.0
{dim}
[observables]
x1 = {{ coordinate = 0 }}
{observable}
[states]
A = "x1 < 0"
{state}
"""

BROKEN = {
    "coordinate out of range": ("dim = 2", "x3 = { coordinate = 5 }", "",
                                "observable 'x3': coordinate index 5 is out of range: the system has 2 coordinates"),
    "coordinate negative": ("dim = 2", "xm = { coordinate = -1 }", "", "observable 'xm': coordinate index -1"),
    "coordinate fractional": ("dim = 2", "xf = { coordinate = 0.5 }", "",
                              "observable 'xf': bad arguments 0.5 for 'coordinate': indices must be integers"),
    "distance out of range": ("dim = 2", "d = { distance = [0, 3] }", "",
                              "observable 'd': particle index 3 is out of range: the system has 1 particles"),
    "distance repeats": ("dim = 4", "d = { distance = [1, 1] }", "", "repeat a particle"),
    "unknown kind": ("dim = 2", "q = { torsion = [0, 1, 2, 3] }", "", "observable 'q': unknown kind 'torsion'"),
    "state does not parse": ("dim = 2", "", 'B = "x1 <> 0"', "state 'B': cannot parse state condition"),
    "state unknown observable": ("dim = 2", "", 'B = "phi > 0"', "state 'B': state 'phi > 0' uses unknown observable"),
    "state not a string": ("dim = 2", "", "B = 3", "state 'B' must be a string"),
    "dim not a number": ('dim = "two"', "", "", "'dim' must be a positive integer"),
    "out of range, no dim": ("", "x3 = { coordinate = 5 }", "", "observable 'x3': coordinate index 5 is out of range"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_system_folders_are_refused_when_loaded(tmp_path, capsys, name):
    dim, observable, state, message = BROKEN[name]
    folder = tmp_path / "my_well"
    folder.mkdir()
    (folder / "system.toml").write_text(DW.format(dim=dim, observable=observable, state=state))
    where = str(folder / "system.toml")
    with pytest.raises(ValueError, match=message) as info:
        load_system(folder)
    assert str(info.value).startswith(where)
    if name == "out of range, no dim":  # only building tells the dim; estimate checks it against the samples
        assert declared_system(folder).dim is None
        samples = SampleSet(np.zeros((5, 2)), np.zeros(5), metadata={"system": "my_well"})
        with pytest.raises(SampleSetError, match="observable 'x3' does not fit the samples: coordinate index 5"):
            summarize(samples, system=declared_system(folder))
    else:
        with pytest.raises(ValueError, match=message):
            declared_system(folder)
    err = _error_line(capsys, ["sample", str(folder), "--sampler", "mala", "--n", "10", "--out", str(tmp_path / "o")])
    assert message.split(":")[0] in err and not (tmp_path / "o" / "samples.npz").exists()


def test_a_molecule_folder_with_an_atom_out_of_range_is_refused_without_building(tmp_path, capsys):
    folder = tmp_path / "ala"
    shutil.copytree(builtin_systems_dir() / "alanine_dipeptide_implicit", folder)
    toml = folder / "system.toml"
    toml.write_text(toml.read_text().replace("dihedral = [6, 8, 14, 16]", "dihedral = [6, 8, 14, 30]"))
    with pytest.raises(ValueError, match=r"observable 'psi': particle index 30 is out of range: the system has 22"):
        declared_system(folder)
    run = tmp_path / "run"
    SampleSet(np.zeros((5, 66)), np.zeros(5), metadata={"system": "alanine_dipeptide_implicit",
                                                         "system_source": str(folder)}).save(run)
    err = _error_line(capsys, ["estimate", str(run)])
    assert str(toml) in err and "observable 'psi'" in err


# --------------------------------------------------------------------------- 6. names and folders
def _user_folder(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "system.toml").write_text(textwrap.dedent(f"""
        name = "{name}"
        type = "double_well"
        temperature = 3.0
        dim = 2
        [observables]
        x1 = {{ coordinate = 0 }}
    """))
    return folder


@pytest.mark.parametrize("load", [load_system, declared_system])
def test_a_bare_name_that_is_built_in_and_a_folder_here_is_ambiguous(tmp_path, monkeypatch, load):
    monkeypatch.chdir(tmp_path)
    _user_folder(tmp_path, "double_well_2d")
    message = "'double_well_2d' is a built-in system and also a folder ./double_well_2d; write ./double_well_2d"
    with pytest.raises(AmbiguousSystemError, match=message):
        load("double_well_2d")
    for ref in ("./double_well_2d", Path("double_well_2d"), str(tmp_path / "double_well_2d")):
        assert load(ref).temperature == 3.0


def test_cli_reports_the_ambiguity_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _user_folder(tmp_path, "double_well_2d")
    err = _error_line(capsys, ["sample", "double_well_2d", "--sampler", "mala", "--n", "10", "--out", "o"])
    assert "write ./double_well_2d for the folder" in err
    assert main(["systems"]) == 0  # listing the built-ins is not ambiguous


@pytest.mark.parametrize("folder_has_definition", [False, True])
def test_a_bare_built_in_name_means_the_built_in(tmp_path, monkeypatch, folder_has_definition):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alanine_dipeptide_implicit").mkdir()  # e.g. a run folder named after the system
    if folder_has_definition:
        monkeypatch.chdir(builtin_systems_dir())  # the built-in folders themselves: no ambiguity
    declared = declared_system("alanine_dipeptide_implicit")
    assert declared.source == builtin_systems_dir() / "alanine_dipeptide_implicit" and declared.dim == 66


def test_a_bare_name_that_is_not_built_in_may_be_a_folder_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _user_folder(tmp_path, "my_well")
    assert load_system("my_well").temperature == 3.0 and declared_system("my_well").dim == 2


@pytest.mark.parametrize("ref", ["./nowhere", "nowhere/deeper", "~/surely_not_a_boltzflow_system", "nowhere"])
def test_a_path_or_name_that_is_nothing_is_unknown(tmp_path, monkeypatch, ref):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownSystemError):
        load_system(ref)
