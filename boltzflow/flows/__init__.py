"""Flows: bijections with log-determinants, coupling layers, base and flow distributions (issue 3)."""

from .augmentation import augment_particle_symmetries
from .base import Bijection, Compose, Inverse
from .coupling import AffineCoupling, SplineCoupling, alternating_masks
from .distributions import BaseDistribution, FlowDistribution
from .internal_coordinates import InternalCoordinates
from .models import ModelFileError, build_flow, load_model, save_model
from .nets import MLP
from .snf import SNF, LangevinBlock, MetropolisBlock, SNFTrainingHistory, train_snf
from .splines import rq_spline
from .training import TrainingHistory, split_holdout, train
from .zmatrix import ZMatrix, zmatrix_from_topology

__all__ = [
    "MLP",
    "SNF",
    "AffineCoupling",
    "BaseDistribution",
    "Bijection",
    "Compose",
    "FlowDistribution",
    "InternalCoordinates",
    "Inverse",
    "LangevinBlock",
    "MetropolisBlock",
    "ModelFileError",
    "SNFTrainingHistory",
    "SplineCoupling",
    "TrainingHistory",
    "ZMatrix",
    "alternating_masks",
    "augment_particle_symmetries",
    "build_flow",
    "load_model",
    "rq_spline",
    "save_model",
    "split_holdout",
    "train",
    "train_snf",
    "zmatrix_from_topology",
]
