"""boltzflow: Boltzmann sampling of molecular and physical systems.

Data flows one way: energies -> systems -> flows/transforms -> samplers -> SampleSet -> estimates.

>>> import boltzflow as bf
>>> system = bf.load_system("double_well_2d")
>>> samples = bf.sample(system, sampler="md", n=1000, seed=0, progress=False)
>>> bf.estimate.ess(samples)
1000.0
"""

from . import estimate
from .samplers import SAMPLERS, sample
from .samples import SampleSet
from .systems import System, list_systems, load_system

__all__ = ["SAMPLERS", "SampleSet", "System", "estimate", "list_systems", "load_system", "sample"]
__version__ = "0.1.0"
