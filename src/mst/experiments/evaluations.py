"""What the ablation runner measures on a checkpoint: a registry of evaluations (:data:`EVALUATIONS`).

Each entry scores one checkpoint (a run's, or the untrained architecture's for the random-init reference) and
names its scores and their column labels. The runner runs every registered evaluation a protocol gives settings
to, the spec check (:func:`mst.experiments.specs.check_protocol`) validates those settings before any training, and
the report aggregates and tabulates the scores; adding an evaluation is one ``EVALUATIONS.register`` call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from mst.registry import ConfigError, Registry

Protocol = Any  # a mst.experiments.specs.Protocol (specs imports this module: the name only, no import back)


class EvalContext:
    """One checkpoint under evaluation. Its default backbone (teacher for MST, encoder for MIM; untrained, seed 0,
    under ``random_init``) and frozen CLS features are loaded once and shared by the evaluations that read them."""

    def __init__(self, run_dir: Path, proto: Protocol, device=None, random_init: bool = False) -> None:
        from mst.eval.features import default_device

        self.run_dir, self.proto, self.random_init = Path(run_dir), proto, random_init
        self.device = default_device(device)

    @cached_property
    def _loaded(self):
        from mst.eval.features import load_eval_backbone

        return load_eval_backbone(self.run_dir, None, self.device, random_init=self.random_init, seed=0)

    @property
    def backbone(self):
        return self._loaded[0]

    @property
    def cfg(self) -> dict:
        return self._loaded[1]

    @cached_property
    def cls_features(self):
        """((train features, labels), (test features, labels)) of the protocol's k-NN subsets (the linear probe's
        data too). Fixed for every run: subsets drawn with seed 0 / 1; ``knn.split=val`` draws bank and queries
        from disjoint training images, so choosing a recipe never looks at the test split."""
        from mst.eval.features import extract_features, load_eval_split

        knn, cfg = self.proto.knn, self.cfg
        if knn.get("split") == "val":
            n_bank, n_query = int(knn["train_subset"]), int(knn["test_subset"])
            x, y = load_eval_split(cfg, "train", n_bank + n_query, seed=0)
            train, test = (x[:n_bank], y[:n_bank]), (x[n_bank:], y[n_bank:])
        else:
            train = load_eval_split(cfg, "train", knn.get("train_subset"), seed=0)
            test = load_eval_split(cfg, "test", knn.get("test_subset"), seed=1)
        return (tuple(extract_features(self.backbone, train, "cls", 256, self.device)),
                tuple(extract_features(self.backbone, test, "cls", 256, self.device)))


def _every_protocol(proto: Protocol) -> dict:
    return {}


@dataclass(frozen=True)
class Evaluation:
    """``run(context, settings) -> {score: value}``. ``metrics``: the scores tabulated (score -> column label, in
    table order; the first is plotted); ``extra``: scores aggregated into results.json only. ``settings(protocol)``:
    its settings under a protocol, None where that protocol skips it (default: runs under every protocol, no
    settings); ``needs``: keys those settings must hold. ``order``: its place among the evaluations (the order
    they run and their scores are listed in)."""

    run: Callable[[EvalContext, dict], dict[str, float]]
    metrics: dict[str, str]
    extra: dict[str, str] = field(default_factory=dict)
    settings: Callable[[Protocol], dict | None] = _every_protocol
    needs: tuple[str, ...] = ()
    order: int = 100


EVALUATIONS: Registry[Evaluation] = Registry("evaluation", "evaluation")


def evaluations() -> list[tuple[str, Evaluation]]:
    """(name, evaluation) in running order (``order``, then name)."""
    return sorted(EVALUATIONS.items(), key=lambda item: (item[1].order, item[0]))


def table_metrics() -> tuple[str, ...]:
    """The tabulated scores of every registered evaluation, in table order."""
    return tuple(m for _, e in evaluations() for m in e.metrics)


def extra_metrics() -> tuple[str, ...]:
    """The scores aggregated into results.json but not tabulated."""
    return tuple(m for _, e in evaluations() for m in e.extra)


def metric_labels() -> dict[str, str]:
    """Score -> its column / panel label."""
    return {m: label for _, e in evaluations() for m, label in (*e.metrics.items(), *e.extra.items())}


def plotted_metrics() -> tuple[str, ...]:
    """One panel per evaluation: its first tabulated score."""
    return tuple(next(iter(e.metrics)) for _, e in evaluations() if e.metrics)


# ----------------------------------------------------------------------------------------------- the built-in four


def _knn(ctx: EvalContext, settings: dict) -> dict[str, float]:
    """Weighted k-NN (k = 10, 20) on the frozen CLS features."""
    from mst.eval.knn import knn_accuracy

    (train_f, train_y), (test_f, test_y) = ctx.cls_features
    dev = ctx.device
    acc = knn_accuracy(train_f.to(dev), train_y.to(dev), test_f.to(dev), test_y.to(dev), ks=(10, 20))
    return {"knn_top1_k20": acc[20], "knn_top1_k10": acc[10]}


def _linear(ctx: EvalContext, s: dict) -> dict[str, float]:
    """A linear probe on the same precomputed CLS features (init seed 0)."""
    from mst.eval.linear import train_linear_probe

    lin = train_linear_probe(*ctx.cls_features, epochs=s["epochs"], lr=s["lr"], batch_size=s["batch_size"],
                             eval_every=s["epochs"], device=ctx.device, seed=0, log=lambda _: None)
    return {"linear_top1": lin["top1"], "linear_best_top1": lin["best_top1"]}


def _dense(ctx: EvalContext, s: dict) -> dict[str, float]:
    """The per-patch linear probe on Fashion-MNIST collages (canvases drawn with seed 0)."""
    from mst.eval.dense import run_dense

    dense = run_dense(ctx.run_dir, n_train=s["n_train"], n_test=s["n_test"], canvas=s["canvas"], epochs=s["epochs"],
                      seed=0, device=ctx.device, random_init=ctx.random_init, log=lambda _: None)
    return {"dense_miou": dense["miou"], "dense_pixel_acc": dense["pixel_acc"]}


def _finetune(ctx: EvalContext, s: dict) -> dict[str, float]:
    """Low-label fine-tuning (from scratch under ``random_init``: the no-pretraining baseline)."""
    from mst.finetune import run_finetune

    res = run_finetune(ctx.run_dir, ctx.run_dir / ("finetune_scratch" if ctx.random_init else "finetune"),
                       preset=preset_path(s["preset"]), overrides=list(s.get("overrides", ())),
                       train_subset=s["train_subset"], random_init=ctx.random_init, log=lambda _: None)
    return {"finetune_top1": res["top1"], "finetune_best_top1": res["best_top1"]}


def preset_path(preset: str | None) -> Path | None:
    """A protocol's or variant's preset, a file in configs/ (None: the defaults)."""
    if preset is None:
        return None
    for base in (Path(__file__).resolve().parents[2] / "configs", Path.cwd() / "configs"):
        if (base / preset).is_file():
            return base / preset
    raise ConfigError(f"protocol preset configs/{preset} not found (run from the repository root)")


EVALUATIONS.register("knn", Evaluation(
    _knn, {"knn_top1_k20": "k-NN top-1 k=20 (%)", "knn_top1_k10": "k-NN top-1 k=10 (%)"},
    settings=lambda p: p.knn, needs=("train_subset", "test_subset"), order=10))
EVALUATIONS.register("linear", Evaluation(
    _linear, {"linear_top1": "Linear top-1 (%)"}, {"linear_best_top1": "Linear best-epoch top-1 (%)"},
    settings=lambda p: p.linear, needs=("epochs", "lr", "batch_size"), order=20))
EVALUATIONS.register("dense", Evaluation(
    _dense, {"dense_miou": "Dense mIoU (%)"}, {"dense_pixel_acc": "Dense pixel acc. (%)"},
    settings=lambda p: p.dense or None, needs=("n_train", "n_test", "epochs", "canvas"), order=30))
EVALUATIONS.register("finetune", Evaluation(
    _finetune, {"finetune_top1": "Low-label fine-tune top-1 (%)"},
    {"finetune_best_top1": "Low-label fine-tune best top-1 (%)"},
    settings=lambda p: p.finetune or None, needs=("preset", "train_subset"), order=40))
