"""Conditioner networks for coupling layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn


class MLP(nn.Module):
    """A fully connected network whose last layer starts at zero, so its output starts at zero.

    A coupling layer whose transform is the identity at zero parameters (as both couplings here
    are) is therefore the identity at initialisation.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    hidden : sequence of int
        Widths of the hidden layers (empty: a single linear layer).
    activation : callable returning nn.Module
        Activation after each hidden layer, e.g. ``nn.SiLU`` (default) or ``nn.Tanh``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in pairwise(widths):
            layers += [nn.Linear(n_in, n_out), activation()]
        last = nn.Linear(widths[-1], out_features)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_features) -> (B, out_features)``."""
        return self.net(x)
