"""Systems: registry, user systems, observables/states, and the shared Energy behaviour."""

import textwrap

import numpy as np
import pytest
import torch

import boltzflow as bf
from boltzflow.energy import EnergyShapeError, FunctionEnergy
from boltzflow.systems import UnknownSystemError
from boltzflow.systems.observables import Dihedral, State

BUILTIN = {"double_well_2d", "dw4", "lj13", "lj55", "alanine_dipeptide_vacuum", "alanine_dipeptide_implicit"}


def test_builtin_systems_are_listed_with_dimensions():
    infos = {i.name: i for i in bf.list_systems()}
    assert BUILTIN <= set(infos)
    assert infos["lj55"].dim == 165 and infos["dw4"].dim == 8 and infos["alanine_dipeptide_vacuum"].dim == 66
    assert infos["alanine_dipeptide_implicit"].temperature == 300.0


@pytest.mark.parametrize("name", ["double_well_2d", "dw4", "lj13", "lj55"])
def test_toy_systems_load_with_finite_start(name):
    system = bf.load_system(name)
    u = system.energy(system.x0[None])
    assert u.shape == (1,) and torch.isfinite(u).all()
    assert system.topology is None and system.openmm_system is None


def test_unknown_system_error_names_the_problem():
    with pytest.raises(UnknownSystemError, match="unknown system 'lj31'.*Did you mean"):
        bf.load_system("lj31")


def test_user_folder_by_path(tmp_path):
    (tmp_path / "system.toml").write_text(textwrap.dedent("""
        name = "my_well"
        type = "double_well"
        temperature = 2.0
        x0 = [1.0, 0.5]
        [parameters]
        a = 0.0
        b = -2.0
        c = 1.0
        [observables]
        x1 = { coordinate = 0 }
        [states]
        A = "x1 < 0"
    """))
    system = bf.load_system(tmp_path)
    assert system.name == "my_well" and system.source == tmp_path
    u = system.energy(torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    assert u.item() == pytest.approx((-2.0 + 1.0 + 0.125) / 2.0)
    assert system.states["A"](np.array([[-1.0, 0.0], [1.0, 0.0]])).tolist() == [True, False]


def test_bad_definitions_are_reported(tmp_path):
    (tmp_path / "system.toml").write_text('name = "x"\ntype = "warp_drive"\ntemperature = 1.0\n')
    with pytest.raises(ValueError, match="unknown system type 'warp_drive'"):
        bf.load_system(tmp_path)
    (tmp_path / "system.toml").write_text('name = "x"\ntype = "double_well"\ntemperature = 1.0\n[parameters]\nq = 1\n')
    with pytest.raises(ValueError, match="unknown parameter"):
        bf.load_system(tmp_path)
    (tmp_path / "system.toml").write_text('name = "x"\ntype = "double_well"\n')
    with pytest.raises(ValueError, match="missing required key 'temperature'"):
        bf.load_system(tmp_path)
    with pytest.raises(ValueError, match="not an OpenMM system"):
        bf.load_system("lj13", platform="CPU")
    with pytest.raises(TypeError, match="unknown option"):
        bf.load_system("lj13", bogus=1)


def test_python_system_folder(tmp_path):
    (tmp_path / "system.toml").write_text('name = "coded"\ntype = "python"\ntemperature = 1.0\n')
    (tmp_path / "system.py").write_text(textwrap.dedent("""
        import boltzflow as bf
        def build(definition, **options):
            return bf.System.from_energy(lambda x: (x ** 2).sum(-1), dim=3, name=definition["name"])
    """))
    system = bf.load_system(tmp_path)
    assert system.name == "coded" and system.dim == 3


def test_from_energy_torch_function_gradient_is_analytic():
    k = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    system = bf.System.from_energy(lambda x: 0.5 * (k * x**2).sum(-1), dim=3, kT=2.0)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    u = system.energy(x)
    u.sum().backward()
    assert torch.allclose(u, 0.25 * (k * x.detach() ** 2).sum(-1))
    assert torch.allclose(x.grad, k * x.detach() / 2.0)
    assert system.temperature == 2.0


def test_from_energy_numpy_function_with_gradient():
    system = bf.System.from_energy(lambda x: (x**4).sum(1), dim=2, gradient=lambda x: 4 * x**3)
    r = system.energy.evaluate(np.array([[1.0, 2.0]]))
    assert r.energy.tolist() == [17.0] and r.gradient.tolist() == [[4.0, 32.0]]


def test_nonfinite_inputs_and_outputs_get_infinite_energy_and_are_counted():
    energy = FunctionEnergy(lambda x: torch.where(x[:, 0] > 5, torch.nan, (x**2).sum(-1)), dim=2)
    x = np.array([[1.0, 1.0], [np.nan, 0.0], [6.0, 0.0], [np.inf, 1.0], [0.0, 2.0]])
    r = energy.evaluate(x)
    assert r.energy[[0, 4]].tolist() == [2.0, 4.0]
    assert np.isposinf(r.energy[[1, 2, 3]]).all()
    assert r.n_failed == 3 and energy.n_failed == 3
    assert (r.gradient[[1, 2, 3]] == 0).all() and r.gradient[0].tolist() == [2.0, 2.0]


def test_shapes_sum_and_scale():
    energy = FunctionEnergy(lambda x: (x**2).sum(-1), dim=6, event_shape=(2, 3))
    x = torch.ones(4, 2, 3, dtype=torch.float64)
    assert energy(x).shape == (4,)
    assert energy(torch.ones(6, dtype=torch.float64)).shape == ()
    with pytest.raises(EnergyShapeError, match=r"expected a batch of shape \(B, 6\)"):
        energy(torch.ones(4, 5, dtype=torch.float64))
    total = energy + 0.5 * energy
    x2 = torch.full((3, 6), 2.0, dtype=torch.float64, requires_grad=True)
    total(x2).sum().backward()
    assert torch.allclose(total(x2), torch.full((3,), 36.0, dtype=torch.float64))
    assert torch.allclose(x2.grad, torch.full((3, 6), 6.0, dtype=torch.float64))


def test_at_temperature_scales_reduced_energy():
    system = bf.load_system("double_well_2d")
    hot = bf.load_system("double_well_2d", temperature=2.0)
    x = torch.tensor([[0.3, -1.0], [1.5, 0.2]], dtype=torch.float64)
    assert torch.allclose(hot.energy(x), system.energy(x) / 2.0)
    assert hot.temperature == 2.0


def test_dihedral_and_angle_match_mdtraj():
    import mdtraj as md

    from boltzflow.systems.observables import Angle

    top = md.Topology()
    residue = top.add_residue("MOL", top.add_chain())
    for i in range(4):
        top.add_atom(f"C{i}", md.element.carbon, residue)
    xyz = np.random.default_rng(3).normal(size=(50, 4, 3))
    traj = md.Trajectory(xyz, top)
    assert np.allclose(Dihedral(0, 1, 2, 3)(xyz.reshape(50, -1)), md.compute_dihedrals(traj, [[0, 1, 2, 3]])[:, 0], atol=1e-5)
    assert np.allclose(Angle(0, 1, 2)(xyz.reshape(50, -1)), md.compute_angles(traj, [[0, 1, 2]])[:, 0], atol=1e-5)


def test_state_expressions_are_validated():
    obs = {"x1": lambda x: x[:, 0], "x2": lambda x: x[:, 1]}
    state = State("x1 > 0 & x2 <= 1.5e0", obs)
    assert state(np.array([[1.0, 1.0], [1.0, 2.0], [-1.0, 0.0]])).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="unknown observable 'phi'"):
        State("phi < 0", obs)
    with pytest.raises(ValueError, match="cannot parse"):
        State("x1 = 0", obs)


@pytest.mark.parametrize("info", bf.list_systems(), ids=lambda info: info.name)
def test_declared_observables_and_states_match_the_built_system(info):
    """What ``boltzflow estimate`` reads from system.toml equals what building the system gives."""
    from boltzflow.systems import declared_system
    from boltzflow.systems.builders import BUILDERS
    from boltzflow.systems.declared import SYSTEM_TYPES
    from boltzflow.systems.registry import read_definition

    assert set(SYSTEM_TYPES) == set(BUILDERS)
    declared = declared_system(info.name)
    if declared is None:  # python systems, and those adding observables in code: the CLI builds them
        assert not SYSTEM_TYPES[read_definition(info.folder)["type"]].observables_declared
        return
    system = bf.load_system(info.name)
    assert (declared.name, declared.temperature, declared.source) == (system.name, system.temperature, system.source)
    assert declared.observables.keys() == system.observables.keys()
    assert declared.states.keys() == system.states.keys()
    x = system.x0.numpy() + np.random.default_rng(0).normal(scale=0.3, size=(64, system.dim))
    for name, observable in declared.observables.items():
        np.testing.assert_array_equal(observable(x), system.observables[name](x), err_msg=name)
    for name, state in declared.states.items():
        np.testing.assert_array_equal(state(x), system.states[name](x), err_msg=name)
