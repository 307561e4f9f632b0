"""Online k-NN during pretraining: the method's evaluation backbone (MST: teacher; MIM: encoder), CLS features
on a fixed labelled subset, every ``log.knn_every`` epochs."""
from __future__ import annotations

from typing import Callable

from mst.eval.features import extract_features, load_eval_split
from mst.eval.knn import knn_accuracy
from mst.health import feature_stats


def online_knn_evaluator(cfg: dict) -> Callable:
    """Returns ``evaluate(trainer) -> {"knn_top1": %, "rankme", "feature_std"}`` (the last two: the CLS features'
    effective rank and spread on the k-NN bank, :func:`feature_stats`); the subsets (``log.knn_train_subset`` /
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
        stats = feature_stats(train_f)
        _warn_if_rank_falls(cache, stats["rankme"], trainer.global_step)
        return {"knn_top1": acc[k], **stats}

    return evaluate


def _warn_if_rank_falls(state: dict, rank: float, step: int, share: float = 0.5) -> None:
    """One CollapseWarning when the features' effective rank drops below ``share`` of the best seen in this run:
    the dimensional collapse that the entropy of a DINO teacher does not show (and that MIM can have too)."""
    best = state.get("best_rank", 0.0)
    state["best_rank"] = max(best, rank)
    if rank < share * best and not state.get("rank_warned"):
        import warnings

        from mst.health import CollapseWarning

        state["rank_warned"] = True
        warnings.warn(f"the effective rank (RankMe) of the CLS features fell to {rank:.1f} at step {step}, below "
                      f"{share:.0%} of this run's best {best:.1f}: the features are collapsing onto fewer "
                      "directions. For DINO/MST try dino.koleo_weight=0.1 or dino.centering=sinkhorn, a smaller "
                      "dino.out_dim or a lower lr (docs/results.md)", CollapseWarning, stacklevel=2)
