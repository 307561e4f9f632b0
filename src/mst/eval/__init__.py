"""Evaluation: k-NN, linear and dense probes, figures, export.

Names are imported lazily so ``import mst.eval`` stays cheap (matplotlib only loads with the figure code).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "extract_features": "features",
    "backbone_features": "features",
    "normalize_images": "features",
    "load_eval_backbone": "features",
    "load_eval_split": "features",
    "random_init_backbone": "features",
    "knn_classify": "knn",
    "knn_accuracy": "knn",
    "run_knn": "knn",
    "train_linear_probe": "linear",
    "run_linear": "linear",
    "make_dense_set": "dense",
    "DenseProbe": "dense",
    "miou": "dense",
    "train_dense_probe": "dense",
    "run_dense": "dense",
    "attention_figure": "visualize",
    "plot_training_curves": "visualize",
    "run_visualize": "visualize",
    "export_backbone": "export",
    "load_exported": "export",
    "detection_state_dict": "export",
    "save_detection_checkpoint": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mst.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mst.eval' has no attribute {name!r}")
