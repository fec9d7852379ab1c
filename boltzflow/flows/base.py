"""The flow API: bijections with log-determinants, composed into flows.

Direction convention (as in zuko / bgflow): ``forward`` is the *generative* direction, from the
latent/base space ``z`` to configurations ``x``; ``inverse`` goes back. Both return the
log-absolute-determinant of the Jacobian of the map they apply, per batch element:

    x, logdet_fwd = bijection.forward(z)      # logdet_fwd = log|det dx/dz|
    z, logdet_inv = bijection.inverse(x)      # logdet_inv = log|det dz/dx| = -logdet_fwd
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Bijection(nn.Module, ABC):
    """An invertible map with a tractable log-determinant, batched over the first dimension."""

    @abstractmethod
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``z -> x``; returns ``(x, log|det dx/dz|)`` with the log-determinant of shape ``(B,)``."""

    @abstractmethod
    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``x -> z``; returns ``(z, log|det dz/dx|)`` with the log-determinant of shape ``(B,)``."""


class Compose(Bijection):
    """Bijections applied in order: ``forward`` runs ``layers[0]`` first, ``inverse`` runs them backwards.

    Parameters
    ----------
    layers : sequence of Bijection
        The maps, from the latent side to the data side.
    """

    def __init__(self, *layers: Bijection) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for layer in self.layers:
            z, ld = layer.forward(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x)
            logdet = logdet + ld
        return x, logdet


class Inverse(Bijection):
    """The inverse of a bijection (swaps ``forward`` and ``inverse``)."""

    def __init__(self, bijection: Bijection) -> None:
        super().__init__()
        self.bijection = bijection

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bijection.inverse(z)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bijection.forward(x)
