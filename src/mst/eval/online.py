"""Online k-NN during pretraining: the method's evaluation backbone (MST: teacher; MIM: encoder), CLS features
on a fixed labelled subset, every ``log.knn_every`` epochs."""
from __future__ import annotations

from typing import Callable

from mst.eval.features import extract_features, load_eval_split
from mst.eval.knn import knn_accuracy


def online_knn_evaluator(cfg: dict) -> Callable:
    """Returns ``evaluate(trainer) -> {"knn_top1": %}``; the subsets (``log.knn_train_subset`` /
    ``log.knn_test_subset``, fixed seeds) are loaded on first use, on the main process only."""
    log_cfg = cfg["log"]
    cache: dict = {}

    def evaluate(trainer) -> dict[str, float]:
        if not cache:
            cache["train"] = load_eval_split(cfg, "train", log_cfg["knn_train_subset"], seed=0)
            cache["test"] = load_eval_split(cfg, "test", log_cfg["knn_test_subset"], seed=1)
        backbone = trainer.method.eval_backbone()
        train_f, train_y = extract_features(backbone, cache["train"], "cls", 256, trainer.device)
        test_f, test_y = extract_features(backbone, cache["test"], "cls", 256, trainer.device)
        k = int(log_cfg["knn_k"])
        acc = knn_accuracy(train_f, train_y, test_f, test_y, ks=(k,))
        return {"knn_top1": acc[k]}

    return evaluate
