"""Evaluations are a registry: one registered here (the backbone's parameter count, a cheap deterministic score) is
run by the ablation runner on every run and on the random-init reference, aggregated and tabulated by the report,
and its settings are checked before any training; it is unregistered afterwards so no other test sees it."""
from __future__ import annotations

import json

import pytest

from mst.config import ConfigError
from mst.experiments import specs
from mst.experiments.evaluations import EVALUATIONS, Evaluation, metric_labels, table_metrics
from mst.experiments.runner import run_ablation
from mst.experiments.specs import PROTOCOLS, check_protocol

BUILT_IN = ("knn_top1_k20", "knn_top1_k10", "linear_top1", "dense_miou", "finetune_top1")
LABEL = "Backbone parameters (thousands)"


def kparams(ctx, settings) -> dict[str, float]:
    return {"backbone_kparams": sum(p.numel() for p in ctx.backbone.parameters()) / settings["per"],
            "config_seed": float(ctx.cfg["seed"])}


@pytest.fixture
def registered():
    EVALUATIONS.register("params", Evaluation(kparams, {"backbone_kparams": LABEL}, {"config_seed": "Config seed"},
                                              settings=lambda proto: {"per": 1000}, needs=("per",)))
    try:
        yield
    finally:
        EVALUATIONS.unregister("params")
    assert table_metrics() == BUILT_IN  # restored


def test_built_in_evaluations_keep_their_scores_and_order():
    assert table_metrics() == specs.METRICS == BUILT_IN
    assert specs.EXTRA_METRICS == ("linear_best_top1", "dense_pixel_acc", "finetune_best_top1")
    assert EVALUATIONS.names() == ["dense", "finetune", "knn", "linear"]
    for proto in PROTOCOLS.values():
        check_protocol(proto)


@pytest.mark.slow
def test_registered_evaluation_runs_and_is_reported(registered, tmp_path):
    from mst.eval.features import load_eval_backbone

    assert specs.METRICS == BUILT_IN + ("backbone_kparams",) and specs.EXTRA_METRICS[-1] == "config_seed"
    out = tmp_path / "out"
    agg = run_ablation("mask", protocol="tiny", seeds=1, out_dir=out, doc=None, variants=["none"],
                       log=lambda s: None)
    run_dir = out / "none" / "seed0"
    backbone, _ = load_eval_backbone(run_dir, None, "cpu")
    expected = sum(p.numel() for p in backbone.parameters()) / 1000
    per_run = json.loads((run_dir / "results.json").read_text())
    assert per_run["metrics"]["backbone_kparams"] == pytest.approx(expected) and expected > 1
    assert per_run["metrics"]["config_seed"] == 0.0
    assert list(per_run["metrics"])[-2:] == ["backbone_kparams", "config_seed"]  # after the built-in scores
    assert list(per_run["wall_s"]) == ["pretrain_s", "knn_s", "linear_s", "dense_s", "params_s", "total_s"]
    stats = agg["variants"][0]["stats"]
    assert stats["backbone_kparams"]["mean"] == pytest.approx(expected) and stats["config_seed"]["values"] == [0.0]
    assert agg["metrics"][-1] == "backbone_kparams" and "config_seed" not in agg["metrics"]  # extra: json only
    assert agg["random_init"]["backbone_kparams"] == pytest.approx(expected)  # the same architecture, untrained
    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index(LABEL)
    for row in (lines[2], lines[3]):  # the variant and the random-init reference
        assert float(row.strip("|").split("|")[col]) == pytest.approx(expected, abs=0.006)
    assert metric_labels()["backbone_kparams"] == LABEL


def test_protocol_missing_an_evaluation_setting_fails_before_training(tmp_path):
    EVALUATIONS.register("needy", Evaluation(kparams, {"needy_score": "Needy"}, needs=("per",)))
    try:
        with pytest.raises(ConfigError, match="protocol 'tiny' runs evaluation 'needy' without per"):
            run_ablation("mask", protocol="tiny", seeds=1, out_dir=tmp_path, doc=None, log=lambda s: None)
    finally:
        EVALUATIONS.unregister("needy")
    assert not list(tmp_path.glob("*/seed*"))  # nothing trained


def test_two_evaluations_reporting_one_score_are_refused():
    EVALUATIONS.register("knn_again", Evaluation(kparams, {"knn_top1_k20": "again"}))
    try:
        with pytest.raises(ConfigError, match="'knn' and 'knn_again' both report a score 'knn_top1_k20'"):
            check_protocol(PROTOCOLS["tiny"])
    finally:
        EVALUATIONS.unregister("knn_again")
