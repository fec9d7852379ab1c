"""Flows: bijections with log-determinants, coupling layers, base and flow distributions (issue 3)."""

from .augmentation import augment_particle_symmetries
from .base import Bijection, Compose, Inverse
from .continuous import ContinuousFlow, build_continuous_flow, load_continuous_flow, save_continuous_flow
from .continuous_training import train_continuous_flow, train_sigma_f
from .coupling import AffineCoupling, SplineCoupling, alternating_masks
from .distributions import BaseDistribution, DefensiveLatent, FlowDistribution
from .internal_coordinates import InternalCoordinates
from .models import ModelFileError, build_flow, load_model, save_model
from .nets import MLP
from .rigid import RigidBodySpec, build_rigid_flow
from .snf import SNF, LangevinBlock, MetropolisBlock, SNFTrainingHistory, build_snf, load_snf, save_snf, train_snf
from .splines import rq_spline
from .training import TrainingHistory, split_holdout, train
from .zmatrix import ZMatrix, zmatrix_from_topology

__all__ = [
    "MLP",
    "RigidBodySpec",
    "SNF",
    "AffineCoupling",
    "BaseDistribution",
    "Bijection",
    "Compose",
    "DefensiveLatent",
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
    "build_continuous_flow",
    "build_flow",
    "load_continuous_flow",
    "save_continuous_flow",
    "train_continuous_flow",
    "train_sigma_f",
    "ContinuousFlow",
    "build_rigid_flow",
    "build_snf",
    "load_model",
    "load_snf",
    "rq_spline",
    "save_model",
    "save_snf",
    "split_holdout",
    "train",
    "train_snf",
    "zmatrix_from_topology",
]
