"""Methods (a registry, :data:`METHODS`): mst (MST), dino (plain DINO: MST with no mask and no decoder), mae,
simmim, finetune (supervised). Importing the package registers them."""
from mst.methods.base import (METHODS, EpochData, Method, StepContext, StepOutput, build_method, load_method,
                              same_training)
from mst.methods.mst import DINO, MST
from mst.methods.mae import MAE
from mst.methods.simmim import SimMIM
from mst.methods.supervised import Supervised
from mst.methods.distill import Distill

__all__ = ["DINO", "MAE", "METHODS", "MST", "EpochData", "Method", "SimMIM", "StepContext", "Supervised", "StepOutput",
           "build_method", "load_method", "same_training"]
