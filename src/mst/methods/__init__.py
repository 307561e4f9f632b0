"""Methods (a registry, :data:`METHODS`): mst (MST / DINO), mae, simmim. Importing the package registers them."""
from mst.methods.base import METHODS, EpochData, Method, StepContext, StepOutput, build_method, load_method
from mst.methods.mst import MST
from mst.methods.mae import MAE
from mst.methods.simmim import SimMIM

__all__ = ["MAE", "METHODS", "MST", "EpochData", "Method", "SimMIM", "StepContext", "StepOutput", "build_method",
           "load_method"]
