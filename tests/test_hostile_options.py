"""Hostile sampler options (issue 17): each is a one-line error naming the option, before any work,
or a correct result; and every numeric option of every sampler has a range rule."""

from __future__ import annotations

import functools
import inspect
import math
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pytest
import torch

import boltzflow as bf
import boltzflow.samplers as samplers
from boltzflow.cli import main
from boltzflow.flows.continuous import build_continuous_flow
from boltzflow.flows.continuous_perturbation import ESTIMATORS
from boltzflow.flows.ode import PROBES
from boltzflow.samplers import SAMPLERS, sample_md, sample_mala, sample_openmm_md
from boltzflow.samplers.adaptive import GLOBAL_MOVES
from boltzflow.samplers.options import (
    FORWARDED_OPTIONS,
    RULES,
    OptionError,
    coerce_option,
    option_hints,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny runs: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def double_well() -> bf.System:
    return bf.load_system("double_well_2d")


@pytest.fixture(scope="module")
def torsion() -> bf.System:
    return bf.load_system("torsion_4atom")


@pytest.fixture(scope="module")
def cnf(double_well) -> bf.flows.ContinuousFlow:
    torch.manual_seed(0)
    data = np.random.default_rng(0).normal(size=(200, 2))
    return build_continuous_flow(double_well, hidden=(8,), time_features=1, n_steps=2, sigma_f_hidden=(8,), data=data)


@pytest.fixture
def spy(monkeypatch):
    """Replace a sampler function by a wrapper (same signature and hints) that records its calls."""
    calls: list[dict[str, Any]] = []

    def install(function_name: str) -> list[dict[str, Any]]:
        real = getattr(samplers, function_name)

        @functools.wraps(real)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(samplers, function_name, recorded)
        return calls

    return install


# ------------------------------------------------------------------------------------ the rejected cases

HUGE_N = 10**13  # n x dim x 8 bytes: far beyond any machine's memory

#: (sampler, keyword arguments of bf.sample, the name the message must give, exception type)
REJECTED: list[tuple[str, dict[str, Any], str, type[Exception]]] = []
for _sampler in ("mala", "hmc", "imh"):
    REJECTED += [
        (_sampler, {"warmup": 10.5}, "warmup", OptionError),
        (_sampler, {"warmup": -1}, "warmup", OptionError),
        (_sampler, {"warmup": True}, "warmup", OptionError),
        (_sampler, {"warmup": "100"}, "warmup", OptionError),
        (_sampler, {"warmup": math.inf}, "warmup", OptionError),
        (_sampler, {"thin": 2.5}, "thin", OptionError),
        (_sampler, {"thin": 0}, "thin", OptionError),
        (_sampler, {"thin": np.float64(1.5)}, "thin", OptionError),
        (_sampler, {"n_chains": 0}, "n_chains", OptionError),
        (_sampler, {"n_chains": False}, "n_chains", OptionError),
        (_sampler, {"progress": "no"}, "progress", OptionError),
        (_sampler, {"checkpoint": 5}, "checkpoint", OptionError),
        (_sampler, {"checkpoint_seconds": -1.0}, "checkpoint_seconds", OptionError),
        (_sampler, {"checkpoint_seconds": "nan"}, "checkpoint_seconds", OptionError),
        (_sampler, {"n": 0}, "n", OptionError),
        (_sampler, {"n": -5}, "n", OptionError),
        (_sampler, {"n": 20.5}, "n", OptionError),
        (_sampler, {"n": True}, "n", OptionError),
        (_sampler, {"n": "20"}, "n", OptionError),
        (_sampler, {"n": HUGE_N}, "n", OptionError),
        (_sampler, {"n": 1e13}, "n", OptionError),
        (_sampler, {"seed": -1}, "seed", OptionError),
        (_sampler, {"seed": 0.5}, "seed", OptionError),
        (_sampler, {"no_such_option": 1}, "no_such_option", TypeError),
    ]
for _sampler in ("mala", "hmc"):
    REJECTED += [
        (_sampler, {"step_size": -0.1}, "step_size", OptionError),
        (_sampler, {"step_size": 0}, "step_size", OptionError),
        (_sampler, {"step_size": math.nan}, "step_size", OptionError),
        (_sampler, {"step_size": "nan"}, "step_size", OptionError),
        (_sampler, {"step_size": "inf"}, "step_size", OptionError),
        (_sampler, {"step_size": "-inf"}, "step_size", OptionError),
        (_sampler, {"step_size": "big"}, "step_size", OptionError),
        (_sampler, {"step_size": True}, "step_size", OptionError),
        (_sampler, {"step_size": [0.1]}, "step_size", OptionError),
        (_sampler, {"target_acceptance": 2}, "target_acceptance", OptionError),
        (_sampler, {"target_acceptance": 0}, "target_acceptance", OptionError),
        (_sampler, {"target_acceptance": 1.0}, "target_acceptance", OptionError),
    ]
REJECTED += [
    ("hmc", {"n_leapfrog": 0}, "n_leapfrog", OptionError),
    ("hmc", {"n_leapfrog": 2.5}, "n_leapfrog", OptionError),
    ("hmc", {"jitter": 1.0}, "jitter", OptionError),
    ("hmc", {"jitter": -0.1}, "jitter", OptionError),
    ("imh", {"local_step_size": -1e-3}, "local_step_size", OptionError),
    ("imh", {"local_target_acceptance": 1.5}, "local_target_acceptance", OptionError),
    ("imh", {"local_steps": 1.5}, "local_steps", OptionError),
    ("isir", {"n_proposals": 0}, "n_proposals", OptionError),
    ("isir", {"n_proposals": 4.5}, "n_proposals", OptionError),
    ("fp-is", {"fd_step": -1e-3}, "fd_step", OptionError),
    ("fp-is", {"sigma_b": 0.0}, "sigma_b", OptionError),
    ("fp-is", {"sigma_b": "nan"}, "sigma_b", OptionError),
    ("fp-is", {"ode_steps": 2.5}, "ode_steps", OptionError),
    ("fp-is", {"ode_steps": 0}, "ode_steps", OptionError),
    ("fp-is", {"batch_size": 0}, "batch_size", OptionError),
    ("fp-is", {"defensive": 1.0}, "defensive", OptionError),
    ("fp-is", {"defensive": -0.1}, "defensive", OptionError),
    ("fp-is", {"defensive_scale": 0.5}, "defensive_scale", OptionError),
    ("snf", {"defensive": 1.0}, "defensive", OptionError),
    ("snf", {"defensive_scale": 0.5}, "defensive_scale", OptionError),
    ("fp-is", {"step_noise": "inf"}, "step_noise", OptionError),
    ("fp-is", {"estimator": "jacobian"}, "estimator", OptionError),
    ("fp-is", {"estimator": 1}, "estimator", OptionError),
    ("fp-is", {"n": HUGE_N}, "n", OptionError),
    ("fp-smc", {"beta_min": 0.0}, "beta_min", OptionError),
    ("fp-smc", {"ess_threshold": 1.5}, "ess_threshold", OptionError),
    ("fp-smc", {"k_min": 0}, "k_min", OptionError),
    ("cnf-hutchinson", {"probe": "uniform"}, "probe", OptionError),
    ("cnf-exact", {"chunk_size": 0}, "chunk_size", OptionError),
    ("neutra", {"thin": 0}, "thin", OptionError),
    ("adaptive", {"global_move": "mh"}, "global_move", OptionError),
    ("adaptive", {"lr": -1e-3}, "lr", OptionError),
    ("adaptive", {"max_grad_norm": "nan"}, "max_grad_norm", OptionError),
    ("adaptive", {"reweighted_power": 0.0}, "reweighted_power", OptionError),
    ("adaptive", {"flow_options": [1, 2]}, "flow_options", OptionError),
    ("flow", {"batch_size": 10.5}, "batch_size", OptionError),
    ("snf", {"batch_size": -1}, "batch_size", OptionError),
    ("lfep", {"batch_size": 0}, "batch_size", OptionError),
]

#: The same on an OpenMM system: ``md`` is OpenMM MD there, ``umbrella`` passes MD options on.
REJECTED_OPENMM: list[tuple[str, dict[str, Any], str, type[Exception]]] = [
    ("md", {"friction_per_ps": -1}, "friction_per_ps", OptionError),
    ("md", {"friction_per_ps": 0}, "friction_per_ps", OptionError),
    ("md", {"timestep_fs": 0.0}, "timestep_fs", OptionError),
    ("md", {"timestep_fs": "nan"}, "timestep_fs", OptionError),
    ("md", {"equilibration_ps": -1.0}, "equilibration_ps", OptionError),
    ("md", {"thin": 2.5}, "thin", OptionError),
    ("md", {"thin": 1e1, "warmup": 10}, "warmup", TypeError),  # a MALA option: not OpenMM MD's
    ("md", {"minimize": "yes"}, "minimize", OptionError),
    ("md", {"platform": 3}, "platform", OptionError),
    ("md", {"n": HUGE_N}, "n", OptionError),
    ("umbrella", {"friction_per_ps": -1}, "friction_per_ps", OptionError),
    ("umbrella", {"thin": 0.5}, "thin", OptionError),
    ("umbrella", {"metadynamics_ns": -2.0}, "metadynamics_ns", OptionError),
    ("umbrella", {"bias_kj": [0.0, "nan", 1.0, 2.0]}, "bias_kj", OptionError),
    ("umbrella", {"observable": 3}, "observable", OptionError),
    ("umbrella", {"temperature_k": 300}, "temperature_k", TypeError),
]

_SPIED = {"mala": "sample_mala", "hmc": "sample_hmc", "imh": "sample_imh", "isir": "sample_isir",
          "fp-is": "sample_fp_is", "fp-smc": "sample_fp_smc", "cnf-hutchinson": "sample_cnf_hutchinson",
          "cnf-exact": "sample_cnf_exact", "neutra": "sample_neutra", "adaptive": "sample_adaptive",
          "flow": "sample_flow", "snf": "sample_snf", "lfep": "sample_lfep", "umbrella": "sample_umbrella_md"}


def _assert_rejected(system, sampler, kwargs, name, error, calls):
    kwargs = {"n": 20, "progress": False, **kwargs}
    with pytest.raises(error) as info:
        bf.sample(system, sampler, **kwargs)
    message = str(info.value)
    assert "\n" not in message and name in message and f"'{sampler}'" in message, message
    assert calls == [], "the sampler ran although its options were invalid"


def _ids(cases: list[tuple[str, dict[str, Any], str, type[Exception]]]) -> list[str]:
    return [f"{s}-{'-'.join(f'{k}={v!r}' for k, v in kw.items())}" for s, kw, _, _ in cases]


@pytest.mark.parametrize(("sampler", "kwargs", "name", "error"), REJECTED, ids=_ids(REJECTED))
def test_a_bad_option_is_one_clear_error_before_any_work(double_well, spy, sampler, kwargs, name, error):
    _assert_rejected(double_well, sampler, kwargs, name, error, spy(_SPIED[sampler]))


@pytest.mark.parametrize(("sampler", "kwargs", "name", "error"), REJECTED_OPENMM, ids=_ids(REJECTED_OPENMM))
def test_a_bad_md_option_is_one_clear_error_before_any_work(torsion, spy, monkeypatch, sampler, kwargs, name, error):
    if sampler == "md":  # sample_md imports the OpenMM sampler from its module
        calls = []
        monkeypatch.setattr("boltzflow.samplers.openmm_md.sample_openmm_md",
                            functools.wraps(sample_openmm_md)(lambda *a, **k: calls.append(k)))
    else:
        calls = spy(_SPIED[sampler])
    _assert_rejected(torsion, sampler, kwargs, name, error, calls)


def test_messages_say_what_the_value_must_be(double_well):
    cases = {
        ("mala", "warmup", 10.5): "sampler 'mala': option warmup=10.5 must be a whole number >= 0",
        ("mala", "step_size", "nan"): "sampler 'mala': option step_size='nan' must be a finite number > 0",
        ("mala", "target_acceptance", 2):
            "sampler 'mala': option target_acceptance=2 must be a finite number in (0, 1)",
        ("fp-is", "ode_steps", 0): "sampler 'fp-is': option ode_steps=0 must be a whole number >= 1 or None",
        ("adaptive", "global_move", "mh"): "sampler 'adaptive': option global_move='mh' must be one of 'imh', 'isir'",
    }
    for (sampler, name, value), expected in cases.items():
        with pytest.raises(OptionError) as info:
            bf.sample(double_well, sampler, n=20, **{name: value})
        assert str(info.value) == expected
    with pytest.raises(OptionError, match=r"n=10000000000000 samples of dimension 2 need about .* GB"):
        bf.sample(double_well, "mala", n=HUGE_N)
    with pytest.raises(TypeError, match=r"sampler 'mala' has no option\(s\) bogus; options: n_chains, thin"):
        bf.sample(double_well, "mala", n=20, bogus=1)


# ------------------------------------------------------------------------------------ the accepted cases


def _finite(samples: bf.SampleSet, system: bf.System, n: int) -> None:
    """Right shape, finite, and real samples: energies are the system's at x (not uninitialised memory)."""
    assert samples.x.shape == (n, system.dim)
    assert np.isfinite(samples.x).all() and np.isfinite(samples.energies).all()
    exact = system.energy.evaluate(samples.x, need_gradient=False).energy
    np.testing.assert_allclose(samples.energies, exact, rtol=1e-6, atol=1e-6)
    assert (np.abs(samples.x) > 1e-100).mean() > 0.5


@pytest.mark.parametrize(("sampler", "options"), [
    ("mala", {"warmup": 1e3, "thin": 1e1, "n_chains": 4.0}),
    ("mala", {"warmup": np.int64(50), "step_size": np.float32(0.01), "checkpoint_seconds": "inf"}),
    ("hmc", {"warmup": 1e2, "thin": 2.0, "n_leapfrog": 5.0, "step_size": 1}),
    ("imh", {"warmup": 1e2, "thin": 1e0, "n_chains": 4.0}),
])
def test_integral_floats_become_ints_and_the_run_is_correct(double_well, spy, sampler, options):
    calls = spy(_SPIED[sampler])
    samples = bf.sample(double_well, sampler, n=20.0, seed=1.0, progress=False, **options)
    _finite(samples, double_well, 20)
    (passed,) = calls
    for name in ("warmup", "thin", "n_chains", "n_leapfrog"):
        if name in options:
            assert type(passed[name]) is int and passed[name] == int(options[name])
    if "step_size" in options:
        assert type(passed["step_size"]) is float
    if "checkpoint_seconds" in options:
        assert passed["checkpoint_seconds"] == math.inf


def test_fp_is_runs_with_integral_float_options(double_well, cnf, spy):
    calls = spy("sample_fp_is")
    samples = bf.sample(double_well, "fp-is", n=20, model=cnf, ode_steps=2.0, batch_size=1e1, progress=False)
    assert samples.x.shape == (20, 2) and np.isfinite(samples.x).all()
    assert calls[0]["ode_steps"] == 2 and type(calls[0]["batch_size"]) is int


def test_md_on_an_openmm_system_runs_with_integral_float_options(torsion):
    samples = bf.sample(torsion, "md", n=20, seed=0, thin=1e1, equilibration_ps=0, minimize=False,
                        timestep_fs=1, progress=False)
    _finite(samples, torsion, 20)


# ------------------------------------------------------------------------------------ the command line


@pytest.mark.parametrize(("system", "args", "name"), [
    ("double_well_2d", ["--sampler", "mala", "-o", "warmup=10.5"], "warmup"),
    ("double_well_2d", ["--sampler", "imh", "-o", "warmup=10.5"], "warmup"),
    ("double_well_2d", ["--sampler", "mala", "-o", "thin=2.5"], "thin"),
    ("double_well_2d", ["--sampler", "imh", "-o", "thin=2.5"], "thin"),
    ("double_well_2d", ["--sampler", "mala", "-o", "warmup=1e3", "-o", "thin=1.5"], "thin"),
    ("double_well_2d", ["--sampler", "mala", "-o", "step_size=-0.1"], "step_size"),
    ("double_well_2d", ["--sampler", "mala", "-o", "step_size=nan"], "step_size"),
    ("double_well_2d", ["--sampler", "hmc", "-o", "step_size=inf"], "step_size"),
    ("double_well_2d", ["--sampler", "mala", "-o", "target_acceptance=2"], "target_acceptance"),
    ("double_well_2d", ["--sampler", "mala", "-o", "warmup=lots"], "warmup"),
    ("double_well_2d", ["--sampler", "mala", "-o", "n_chains=True"], "n_chains"),
    ("double_well_2d", ["--sampler", "mala", "-o", "bogus=1"], "bogus"),
    ("double_well_2d", ["--sampler", "fp-is", "-o", "fd_step=-1"], "fd_step"),
    ("double_well_2d", ["--sampler", "mala", "--n", "10000000000000"], "n"),
    ("torsion_4atom", ["--sampler", "md", "-o", "friction_per_ps=-1"], "friction_per_ps"),
])
def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys, system, args, name):
    out = tmp_path / "run"
    assert main(["sample", system, "--n", "20", *args, "--out", str(out), "--quiet", "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("boltzflow sample: error: ") and name in err, err
    assert not (out / "samples.npz").exists()


def test_the_cli_accepts_integral_floats(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sample", "double_well_2d", "--sampler", "mala", "--n", "20", "-o", "warmup=1e3", "-o", "thin=1e1",
                 "-o", "checkpoint_seconds=inf", "--out", str(out), "--quiet", "--no-plot"])
    assert code == 0, capsys.readouterr().err
    _finite(bf.SampleSet.load(out), bf.load_system("double_well_2d"), 20)


# ------------------------------------------------------------------------------------ every hint kind


@pytest.mark.parametrize(("hint", "value", "expected"), [
    (int, 7, 7), (int, 7.0, 7), (int, np.int32(7), 7), (int, 1e3, 1000),
    (float, 1, 1.0), (float, np.float32(0.5), 0.5), (float, "-nan", None), (float, "1.5", None),
    (bool, np.bool_(True), True), (bool, 1, None), (str, "phi", "phi"), (str, Path("phi"), None),
    (Path, "a/b", "a/b"), (Path, Path("a/b"), Path("a/b")), (Path, 3, None),
    (int | None, None, None), (int | None, 2.0, 2), (float | None, "x", None),
    (Literal["a", "b"], "b", "b"), (Literal[1, 2], True, None), (Literal[1, 2], 2, 2),
    (list[float], [1, 2.5], [1.0, 2.5]), (list[float], (1, 2), [1.0, 2.0]), (list[float], [1, "nan"], None),
    (list[float], "12", None), (Sequence[float], [3], [3.0]), (Sequence[int], [1.0, 2], [1, 2]),
    (tuple[float, ...], [1, 2], (1.0, 2.0)), (tuple[int, int], (1, 2.0), (1, 2)), (tuple[int, int], (1,), None),
    (dict[str, Any], {"a": 1}, {"a": 1}), (dict[str, Any], [("a", 1)], None),
    (np.ndarray | None, np.zeros(2), "same"), (Any, object, object),
    (str | Path | torch.nn.Module | None, torch.nn.Linear(1, 1), "same"),
    (str | Path | torch.nn.Module | None, 1.5, "same"),  # a model option: left to the sampler's resolver
    (list[float] | np.ndarray | None, [0.0, "nan"], None), (list[float] | np.ndarray | None, np.zeros(2), "same"),
])
def test_each_kind_of_hint_is_coerced_or_rejected(hint, value, expected):
    if expected is None and value is not None:
        with pytest.raises(OptionError, match="option x="):
            coerce_option("test", "x", value, hint)
        return
    result = coerce_option("test", "x", value, hint)
    if isinstance(expected, str) and expected == "same":
        assert result is value
    else:
        assert result == expected and type(result) is type(expected)


def test_a_long_or_multi_line_value_is_shown_by_its_type():
    with pytest.raises(OptionError, match=r"option model=<Sequential> must be a string, a path or None"):
        coerce_option("test", "model", torch.nn.Sequential(torch.nn.Linear(1, 1)), str | Path | None)


# ------------------------------------------------------------------------------------ no option slips by


def _sampler_functions() -> dict[str, Any]:
    """Every function a sampler name runs; ``md`` runs MALA or OpenMM MD."""
    functions = {name: fn for name, fn in SAMPLERS.items() if fn is not sample_md}
    return {**functions, "md (mala)": sample_mala, "md (openmm)": sample_openmm_md}


def _numeric(hint: Any) -> bool:
    """Whether ``hint`` is or contains int or float (``int | None``, ``list[float]``...)."""
    return hint in (int, float) or any(_numeric(arg) for arg in typing.get_args(hint))


@pytest.mark.parametrize(("sampler", "fn"), list(_sampler_functions().items()))
def test_every_numeric_option_has_a_rule_and_every_default_passes_it(sampler, fn):
    parameters = inspect.signature(fn).parameters
    for p in parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            assert fn.__name__ in FORWARDED_OPTIONS, f"{sampler}: **{p.name} goes nowhere the checks know"
        elif p.name != "system":
            assert p.name in typing.get_type_hints(fn), f"{sampler}: option {p.name} has no type hint"
    hints = option_hints(fn)
    for name, hint in hints.items():
        if _numeric(hint):
            assert name in RULES, f"{sampler}: numeric option {name} has no entry in RULES (or UNCONSTRAINED)"
    targets = [fn] + ([fn.__globals__[FORWARDED_OPTIONS[fn.__name__]]] if fn.__name__ in FORWARDED_OPTIONS else [])
    for target in targets:
        for p in inspect.signature(target).parameters.values():
            if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD:
                assert coerce_option(sampler, p.name, p.default, hints[p.name]) == p.default


def test_every_rule_is_used_by_some_sampler():
    used = {name for fn in _sampler_functions().values() for name in option_hints(fn)}
    assert set(RULES) <= used, f"rules for no option: {sorted(set(RULES) - used)}"


def test_literal_choices_match_what_the_samplers_accept():
    hints = {name: option_hints(fn) for name, fn in _sampler_functions().items()}
    assert typing.get_args(hints["adaptive"]["global_move"]) == GLOBAL_MOVES
    assert typing.get_args(hints["cnf-hutchinson"]["probe"]) == PROBES
    for sampler in ("fp", "fp-is", "fp-smc"):
        assert typing.get_args(hints[sampler]["estimator"]) == ESTIMATORS
