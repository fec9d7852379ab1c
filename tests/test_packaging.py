"""The wheel ships every subpackage and the built-in systems (pyproject lists packages by hand)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "boltzflow").rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "boltzflow._systems" in listed


def test_every_system_folder_has_a_definition():
    folders = [p for p in (ROOT / "systems").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    assert folders and all((p / "system.toml").is_file() for p in folders)


def test_reference_data_and_shipped_models_are_packaged_and_found():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["boltzflow._data"] == "data" and "boltzflow._data" in config["packages"]
    patterns = config["package-data"]["boltzflow._data"]
    assert "reference.json" in patterns and "*/flow.pt" in patterns
    from boltzflow.reference_data import builtin_data_dir, reference_estimates, shipped_model

    assert builtin_data_dir().resolve() == (ROOT / "data").resolve()
    for name in ("double_well_2d", "alanine_dipeptide_implicit", "dw4", "tetrahedron_field"):
        assert shipped_model(name) is not None, name
        assert reference_estimates(name), name
    assert reference_estimates("dw4")["pair_distance_profile"]
    assert shipped_model("lj55") is None and reference_estimates("no_such_system") is None
