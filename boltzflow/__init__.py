"""boltzflow: Boltzmann sampling of molecular and physical systems.

Data flows one way: energies -> systems -> flows/transforms -> samplers -> SampleSet -> estimates.

The public names are loaded on first use, so ``import boltzflow`` is cheap and estimating from a
saved :class:`SampleSet` needs neither torch nor OpenMM.

>>> import boltzflow as bf
>>> system = bf.load_system("double_well_2d")
>>> samples = bf.sample(system, sampler="md", n=1000, seed=0, progress=False)
>>> round(bf.estimate.ess(samples))
1000
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import estimate
    from .samplers import SAMPLERS, sample
    from .samples import SampleSet
    from .systems import System, list_systems, load_system

_ATTRIBUTES = {
    "SAMPLERS": "samplers",
    "sample": "samplers",
    "SampleSet": "samples",
    "System": "systems",
    "list_systems": "systems",
    "load_system": "systems",
}
_SUBPACKAGES = {"energy", "estimate", "flows", "io", "plots", "reference_data", "samplers", "samples", "systems"}

__all__ = ["SAMPLERS", "SampleSet", "System", "estimate", "list_systems", "load_system", "sample"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name or subpackage on first access (PEP 562)."""
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ATTRIBUTES, *_SUBPACKAGES})
