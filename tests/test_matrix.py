"""The methods x strategies matrix: every cell either resolves to a config or is refused by it with the reason the
report prints; the grid report (tables, step times, figure) from finished runs, checked against hand computation."""
from __future__ import annotations

import json
import statistics

import pytest
import yaml

import mst.experiments.runner as runner
from mst.config import ConfigError
from mst.experiments.grid import grid_markdown
from mst.experiments.runner import build_run_config, run_ablation
from mst.experiments.specs import ABLATIONS, Ablation, Variant
from tests.conftest import TINY_TEACHER

MATRIX = ABLATIONS["matrix"]


def test_every_cell_trains_from_a_config_or_is_refused_in_one_line():
    methods = {"mst": ("mst", "cnn"), "dino": ("dino", "none"), "mae": ("mae", None), "simmim": ("simmim", None)}
    teacher = ("mst", "dino")  # the methods whose strategies sit in the mst section and read the teacher
    seen = set()
    for v in MATRIX.variants:
        seen.add(v.cell)
        if v.refused:
            with pytest.raises(ConfigError) as e:
                build_run_config("matrix", v.name, 0, "cpu_methods")
            assert "\n" not in str(e.value) and "=" in str(e.value) and v.refused in str(e.value)
            continue
        assert v.teacher == (v.cell[1] == "frozen")  # only the frozen column reads the runner's --teacher
        cfg = build_run_config("matrix", v.name, 0, "cpu_methods", teacher=TINY_TEACHER if v.teacher else None)
        method, decoder = methods[v.cell[0]]
        assert cfg["method"] == method and (decoder is None or cfg["mst"]["decoder"] == decoder)
        section = cfg["mask"]
        strategy = v.cell[1]
        if strategy == "amt" and method not in teacher:
            assert cfg["amt"]["enabled"] is True
        elif strategy == "frozen":  # the attention column's rule (MAE: attmask's) on the frozen teacher's map
            assert section["importance"] == "frozen" and cfg["teacher"]["init"] == TINY_TEACHER
            assert section["strategy"] == ("attmask" if method == "mae" else "attention")
        elif strategy == "random":
            assert section["strategy"] == {"mst": "random", "dino": "random", "mae": "patches",
                                           "simmim": "blocks"}[method]
        else:
            assert section["strategy"] == strategy
        if strategy in ("attention", "attmask"):  # they read an attention: the teacher's or the encoder's
            assert section["importance"] == ("teacher" if method in teacher else "encoder")
        # equal budget within a method: the strategy changes nothing but the mask
        base = build_run_config("matrix", f"{v.cell[0]}_random", 0, "cpu_methods")
        assert (cfg["optim"], cfg["model"], cfg["data"]) == (base["optim"], base["model"], base["data"])
    assert seen == {(m, s) for m in methods for s in ("random", "attention", "attmask", "amt", "none", "frozen")}
    reasons = {v.name: v.refused for v in MATRIX.variants}
    assert {n for n, r in reasons.items() if r} == {"mst_amt", "mae_attention", "mae_none", "simmim_none"}


def test_a_refusal_must_be_the_configs(monkeypatch, tmp_path):
    """A variant listed as refused whose config is accepted is an error, and so is an unlisted variant the config
    refuses: the table must say what the code does."""
    spec = Ablation((Variant("ok", ("mask.strategy=random",)), Variant("listed", ("mask.strategy=random",), refused="x")))
    monkeypatch.setitem(ABLATIONS, "fake", spec)
    with pytest.raises(ConfigError, match="'listed' of ablation 'fake' is listed as refused, but its config is acc"):
        run_ablation("fake", protocol="tiny", seeds=1, out_dir=tmp_path, doc=None)
    spec = Ablation((Variant("other", ("mask.strategy=amt",), refused="hides nothing"),))  # refused, for another reason
    monkeypatch.setitem(ABLATIONS, "fake", spec)
    with pytest.raises(ConfigError, match="because 'hides nothing', but its config is refused for another reason: "
                                          "mask.strategy='amt' throws tokens away"):
        run_ablation("fake", protocol="tiny", seeds=1, out_dir=tmp_path, doc=None)
    spec = Ablation((Variant("bad", ("mask.strategy=amt",)),))  # the CNN decoder cannot throw
    monkeypatch.setitem(ABLATIONS, "fake", spec)
    with pytest.raises(ConfigError, match="throws tokens away"):
        run_ablation("fake", protocol="tiny", seeds=1, out_dir=tmp_path, doc=None)
    assert not list(tmp_path.glob("*/seed*"))


def _fake_run(out, variant, seed, knn, linear, ft, rates, batch, step_ms=None):
    d = out / variant / f"seed{seed}"
    d.mkdir(parents=True)
    metrics = {"knn_top1_k20": knn, "knn_top1_k10": knn - 1, "linear_top1": linear, "linear_best_top1": linear,
               "finetune_top1": ft, "finetune_best_top1": ft}
    (d / "results.json").write_text(json.dumps({"seed": seed, "metrics": metrics,
                                                "wall_s": {"pretrain_s": 60.0, "total_s": 90.0}}))
    (d / "config.yaml").write_text(yaml.safe_dump({"optim": {"batch_size": batch}}))
    lines = [{"step": 50 * (i + 1), "images_per_s": r, **({"step_ms": step_ms[i]} if step_ms else {})}
             for i, r in enumerate(rates)] + [{"knn_top1": 50.0}]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_grid_report_from_finished_runs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _fake_run(out, "mae_random", 0, 76.0, 80.0, 74.0, [600.0, 640.0, 700.0], 64)
    _fake_run(out, "mae_random", 1, 78.0, 79.0, 75.0, [640.0], 64)
    _fake_run(out, "mae_amt", 0, 77.0, 81.0, 73.5, [800.0, 1000.0], 64)
    _fake_run(out, "dino_amt", 0, 60.0, 65.0, 66.0, [100.0, 100.0, 100.0], 32, step_ms=[310.0, 330.0, 900.0])
    doc = tmp_path / "results.md"
    doc.write_text("intro\n<!-- ablation:matrix:start -->\nold\n<!-- ablation:matrix:end -->\ntail\n")
    monkeypatch.setattr(runner, "pretrain", lambda *a, **k: pytest.fail("report_only pretrained"))
    lines = []
    agg = run_ablation("matrix", protocol="cpu_methods", seeds=2, out_dir=out, doc=doc, report_only=True,
                       log=lines.append)
    assert any(line.startswith("[mst_amt] refused by its config, not trained: mask.strategy='amt' throws") for line in lines)
    rows = {r["variant"]: r for r in agg["variants"]}
    assert rows["mst_amt"]["refused"].startswith("mask.strategy='amt' throws tokens away") and rows["mst_amt"]["n_seeds"] == 0
    # step time: the median logged step of each run (batch / images per second), then mean over seeds
    s0, s1 = 1000 * 64 / 640.0, 1000 * 64 / 640.0
    assert rows["mae_random"]["stats"]["step_ms"]["mean"] == pytest.approx((s0 + s1) / 2)
    amt_ms = 1000 * 64 / statistics.median([800.0, 1000.0])
    assert rows["mae_amt"]["stats"]["step_ms"]["mean"] == pytest.approx(amt_ms)
    assert rows["dino_amt"]["stats"]["step_ms"]["mean"] == pytest.approx(330.0)  # logged step times win
    md = grid_markdown(agg)
    tables = {}
    for block in md.split("\n\n"):
        lines_ = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines_:
            head = [c.strip() for c in lines_[0].strip("|").split("|")]
            tables[head[0]] = {r[0]: dict(zip(head[1:], r[1:])) for r in
                               ([c.strip() for c in ln.strip("|").split("|")] for ln in lines_[2:])}
    knn = tables["k-NN top-1 k=20 (%)"]
    assert list(knn) == ["mst", "dino", "mae", "simmim"]
    assert knn["mae"]["random"] == f"77.00 ± {statistics.stdev([76.0, 78.0]):.2f}"
    assert knn["mae"]["amt"] == "77.00" and knn["dino"]["amt"] == "60.00"
    assert knn["simmim"]["amt"] == "not run yet"
    notes = md.split("Refused by the config (the one-line reason it gives): ")[1]
    number = knn["mst"]["amt"].removeprefix("refused (").removesuffix(")")
    assert f"({number}) {rows['mst_amt']['refused']}" in notes
    assert knn["mae"]["none"].startswith("refused (") and knn["mae"]["none"] != knn["mst"]["amt"]
    step = tables["Step time (ms, median logged wall), x the random cell of the row"]
    assert step["mae"]["amt"] == f"{amt_ms:.1f} ({amt_ms / s0:.2f}x)"
    assert step["mae"]["random"] == f"{s0:.1f}"
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "old" not in text and md in text
    assert (out / "results.png").stat().st_size > 10_000


def test_cpu_time_per_step_is_shown_where_one_thread_runs_recorded_it(tmp_path):
    """CPU time per step: the pretraining process time over the last logged step (not inflated by other jobs on
    the cores); the grid shows it instead of the wall step time once runs have it."""
    from mst.experiments.report import cpu_step_ms

    out = tmp_path / "out"
    _fake_run(out, "mae_random", 0, 76.0, 80.0, 74.0, [600.0, 640.0], 64)
    _fake_run(out, "mae_amt", 0, 77.0, 81.0, 73.5, [800.0, 1000.0], 64)
    for variant, cpu in (("mae_random", 30.0), ("mae_amt", 27.0)):
        p = out / variant / "seed0" / "results.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "cpu_s": {"pretrain_s": cpu, "threads": 1}}))
    assert cpu_step_ms(out / "mae_random" / "seed0", {"cpu_s": {"pretrain_s": 30.0, "threads": 1}}) == 300.0  # 100 steps
    assert cpu_step_ms(out / "mae_random" / "seed0", {"cpu_s": {"pretrain_s": 30.0, "threads": 2}}) is None
    agg = run_ablation("matrix", protocol="cpu_methods", seeds=1, out_dir=out, doc=None, report_only=True,
                       log=lambda s: None)
    md = grid_markdown(agg)
    assert "| CPU time per step (ms, one thread, AMT refreshes included), x the random cell of the row |" in md
    assert "| mae | 300.0 | refused (2) | not run yet | 270.0 (0.90x) | refused (3) |" in md


def test_a_resumed_run_is_timed_by_the_steps_its_last_process_trained(tmp_path):
    """A run resumed from a checkpoint records the CPU time and the steps of the process that finished it: CPU ms
    per step divides the two, and its partial pretraining minutes stay out of the table's minutes column."""
    from mst.experiments.report import _minutes, cpu_step_ms

    out = tmp_path / "out"
    _fake_run(out, "mae_random", 0, 76.0, 80.0, 74.0, [600.0, 640.0, 700.0, 700.0], 64)  # logged up to step 200
    run = out / "mae_random" / "seed0"
    resumed = {"cpu_s": {"pretrain_s": 6.0, "pretrain_steps": 40, "threads": 1}}
    assert cpu_step_ms(run, resumed) == 150.0  # 6 s over its 40 steps, not over the 200 of the run
    assert cpu_step_ms(run, {"cpu_s": {"pretrain_s": 30.0, "pretrain_steps": 200, "threads": 1}}) == 150.0
    whole = {"wall_s": {"pretrain_s": 120.0}, "cpu_s": {"pretrain_s": 60.0}}
    part = {"wall_s": {"pretrain_s": 6.0}, "cpu_s": {"pretrain_s": 6.0}, "resumed": True}
    assert _minutes([whole, part]) == "2.0 / 1.0" and _minutes([part]) == "–"
    p = run / "results.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **resumed}))
    agg = run_ablation("matrix", protocol="cpu_methods", seeds=1, out_dir=out, doc=None, report_only=True,
                       log=lambda s: None)
    row = next(r for r in agg["variants"] if r["variant"] == "mae_random")
    assert row["runs"][0]["resumed"] and row["stats"]["cpu_step_ms"]["mean"] == 150.0


def test_a_doc_with_a_section_twice_is_refused(tmp_path):
    from mst.experiments.report import update_results_doc

    res = tmp_path / "results.json"
    res.write_text(json.dumps({"ablation": "mask", "protocol": {"name": "cpu", "description": "d"}, "variants": [],
                               "metrics": [], "seeds_requested": 1, "spread": {}, "total_wall_s": 0}))
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- ablation:mask:start -->\n<!-- ablation:mask:end -->\n" * 2)
    with pytest.raises(ValueError, match="doc.md has the marker <!-- ablation:mask:start --> 2 times"):
        update_results_doc(res, doc)


def test_the_frozen_column_is_skipped_without_the_runners_teacher(tmp_path):
    lines: list[str] = []
    run_ablation("matrix", protocol="cpu_methods", seeds=1, out_dir=tmp_path, doc=None,
                 variants=["mst_frozen", "mae_frozen", "mst_none"], report_only=True, log=lines.append)
    assert "skipped (they read a frozen pretrained teacher: pass --teacher SOURCE): mst_frozen, mae_frozen" in lines
    assert any(line.startswith("ablation matrix: 1 variants x 1 seeds") for line in lines)
