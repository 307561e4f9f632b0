"""Degradations (a registry, :data:`DEGRADATIONS`): none, zoom_in, zoom_out, distort, blur, decolorize (Beyond
Masking). Importing the package registers them."""
from mst.degradations.base import DEGRADATIONS, Degradation, Degraded, NoDegradation, build_degradation
from mst.degradations.blur import Blur
from mst.degradations.decolorize import Decolorize
from mst.degradations.distort import Distort, fisheye_grid
from mst.degradations.zoom import ZoomIn, ZoomOut

__all__ = ["DEGRADATIONS", "Blur", "Decolorize", "Degradation", "Degraded", "Distort", "NoDegradation", "ZoomIn",
           "ZoomOut", "build_degradation", "fisheye_grid"]
