"""Evaluate user observables on the samples that carry weight, and never on failed ones."""

from __future__ import annotations

from typing import Callable, Union

import numpy as np
from numpy.typing import ArrayLike

from ..samples import SampleSet

Observable = Union[Callable[[np.ndarray], ArrayLike], ArrayLike]


def observable_values(f: Observable, samples: SampleSet, keep: np.ndarray, what: str) -> np.ndarray:
    """Values of ``f`` on the samples ``keep`` (a boolean mask), as a float64 ``(keep.sum(),)`` array.

    ``f`` is either a function of the configurations ``x[keep]`` (``(M, D)`` numpy) returning
    ``(M,)`` values, or an ``(N,)`` array of per-sample values (entries outside ``keep`` ignored).

    Raises
    ------
    ValueError
        If the values have the wrong shape or are not finite on a kept sample.
    """
    m = int(np.count_nonzero(keep))
    if callable(f):
        values = np.asarray(f(samples.x[keep]), dtype=np.float64)
        if values.size != m:
            raise ValueError(f"{what} returned {values.size} values for {m} configurations")
    else:
        values = np.asarray(f, dtype=np.float64)
        if values.size != len(samples):
            raise ValueError(f"{what} has {values.size} values for {len(samples)} samples")
        values = values.reshape(-1)[keep]
    values = values.reshape(-1)
    bad = np.count_nonzero(~np.isfinite(values))
    if bad:
        raise ValueError(f"{what} is not finite on {bad} samples with nonzero weight")
    return values
