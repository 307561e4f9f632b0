"""Ablation runner: one tiny 3-variant x 2-seed ablation (shared by the tests), its reports, resuming, the doc.

The tests that need the tiny ablation (about 30-50 s on 2 shared cores, run once per module) are marked slow."""
from __future__ import annotations

import json
import re
import shutil
import statistics

import pytest
import yaml

import mst.engine.trainer as trainer_mod
import mst.experiments.runner as ablation
from mst.config import ConfigError
from mst.experiments.report import section_markers, update_results_doc
from mst.experiments.runner import build_run_config, run_ablation
from mst.experiments.specs import ABLATIONS, METRICS, PROTOCOLS
from tests.conftest import TINY_TEACHER

VARIANTS = ["none", "random", "attention"]
DOC = """# Results

Intro text that must survive.

<!-- ablation:mask:start -->
not run yet
<!-- ablation:mask:end -->

Between the sections.

<!-- ablation:decoder:start -->
decoder placeholder
<!-- ablation:decoder:end -->

Tail text.
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    doc = root / "results_doc.md"
    doc.write_text(DOC)
    lines: list[str] = []
    agg = run_ablation("mask", protocol="tiny", seeds=2, out_dir=root / "out", doc=doc, log=lines.append)
    return root / "out", doc, agg, lines


def _table_rows(md: str) -> tuple[list[str], dict[str, list[str]]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("|")]
    header, body = rows[0], rows[2:]
    return header, {r[0]: r for r in body}


@pytest.mark.slow
def test_results_json_holds_every_variant_and_seed(tiny_run):
    out, _, agg, _ = tiny_run
    data = json.loads((out / "results.json").read_text())
    assert data["ablation"] == "mask" and data["protocol"]["name"] == "tiny"
    assert [v["variant"] for v in data["variants"]] == VARIANTS
    for v in data["variants"]:
        assert v["n_seeds"] == 2 and v["seeds"] == [0, 1]
        assert set(data["metrics"]) == set(METRICS) - {"finetune_top1"} <= set(v["stats"])  # tiny: no fine-tune
        for seed in (0, 1):
            run_dir = out / v["variant"] / f"seed{seed}"
            per_run = json.loads((run_dir / "results.json").read_text())
            assert per_run["variant"] == v["variant"] and per_run["seed"] == seed
            assert per_run["wall_s"]["total_s"] > 0
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert cfg["seed"] == seed and cfg["mask"]["strategy"] == v["variant"]
            assert cfg["mst"]["decoder"] == "cnn"  # Table 4 compares strategies inside MST
    # Table 4: "all methods mask with the same probability p"
    cfgs = {v: build_run_config("mask", v, 0, "tiny") for v in VARIANTS}
    assert cfgs["random"]["mask"]["p"] == cfgs["attention"]["mask"]["p"] == 0.1
    assert data == json.loads(json.dumps(agg))


@pytest.mark.slow
def test_mean_std_match_per_run_results_and_markdown(tiny_run):
    out, _, _, lines = tiny_run
    data = json.loads((out / "results.json").read_text())
    header, rows = _table_rows((out / "results.md").read_text())
    assert header[0] == "Variant" and "Seeds" in header and header[-1].startswith("Paper linear top-1")
    for col in ("k-NN top-1 k=20 (%)", "k-NN top-1 k=10 (%)", "Linear top-1 (%)", "Dense mIoU (%)"):
        assert col in header
    assert list(rows) == VARIANTS + ["random init (reference)"]
    ref = json.loads((out / "random_init" / "results.json").read_text())["metrics"]
    assert float(rows["random init (reference)"][header.index("Dense mIoU (%)")]) == pytest.approx(
        ref["dense_miou"], abs=0.006)
    for v in data["variants"]:
        per_run = [json.loads((out / v["variant"] / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
        row = rows[v["variant"]]
        assert row[header.index("Seeds")] == "2"
        for m, col in zip(METRICS, ("k-NN top-1 k=20 (%)", "k-NN top-1 k=10 (%)", "Linear top-1 (%)",
                                    "Dense mIoU (%)")):
            vals = [r["metrics"][m] for r in per_run]
            mean, std = statistics.fmean(vals), statistics.stdev(vals)
            assert v["stats"][m]["mean"] == pytest.approx(mean) and v["stats"][m]["std"] == pytest.approx(std)
            cell = re.fullmatch(r"([\d.]+) ± ([\d.]+)", row[header.index(col)])
            assert cell, row[header.index(col)]
            assert float(cell.group(1)) == pytest.approx(mean, abs=0.006)
            assert float(cell.group(2)) == pytest.approx(std, abs=0.006)
    paper = header.index(header[-1])
    assert [rows[v][paper] for v in VARIANTS] == ["73.1", "63.2", "73.7"]
    assert any(line.startswith("std across seeds") for line in lines)  # the spread is printed


@pytest.mark.slow
def test_plot_written(tiny_run):
    out = tiny_run[0]
    png = out / "results.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_doc_section_regenerated_and_nothing_else(tiny_run):
    out, doc, _, _ = tiny_run
    text = doc.read_text()
    start, end = section_markers("mask")
    before, rest = text.split(start)
    inside, after = rest.split(end)
    assert before == DOC.split(start)[0] and after == DOC.split(end)[1]
    assert "not run yet" not in inside and "| attention |" in inside and "mst ablate mask" in inside
    # regenerating is idempotent, and another section is left alone
    update_results_doc(out / "results.json", doc)
    assert doc.read_text() == text
    assert "decoder placeholder" in text


@pytest.mark.slow
def test_update_results_doc_appends_missing_section(tiny_run, tmp_path):
    out = tiny_run[0]
    doc = tmp_path / "d.md"
    doc.write_text("# Only a title\n")
    update_results_doc(out / "results.json", doc, section="mask")
    text = doc.read_text()
    assert text.startswith("# Only a title\n") and text.count("<!-- ablation:mask:start -->") == 1


@pytest.mark.slow
def test_rerun_skips_finished_runs(tiny_run, tmp_path, monkeypatch):
    src = tiny_run[0]
    out = tmp_path / "out"
    shutil.copytree(src, out)
    calls = {"fit": 0, "evaluate": 0}
    real_fit, real_eval = trainer_mod.Trainer.fit, ablation.evaluate

    def fit(self, *a, **k):
        calls["fit"] += 1
        return real_fit(self, *a, **k)

    def evaluate(*a, **k):
        calls["evaluate"] += 1
        return real_eval(*a, **k)

    monkeypatch.setattr(trainer_mod.Trainer, "fit", fit)
    monkeypatch.setattr(ablation, "evaluate", evaluate)
    run_ablation("mask", protocol="tiny", seeds=2, out_dir=out, doc=None, log=lambda s: None)
    assert calls == {"fit": 0, "evaluate": 0}
    # an evaluation lost (pretraining kept): only that run is re-evaluated, nothing retrained
    mtime = (out / "none" / "seed0" / "checkpoint.pt").stat().st_mtime_ns
    (out / "random" / "seed1" / "results.json").unlink()
    agg = run_ablation("mask", protocol="tiny", seeds=2, out_dir=out, doc=None, log=lambda s: None)
    assert calls == {"fit": 0, "evaluate": 1}
    assert (out / "none" / "seed0" / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert all(v["n_seeds"] == 2 for v in agg["variants"])
    # a run whose pretraining did not finish is trained (resumed), then evaluated
    (out / "attention" / "seed0" / "pretrain.json").unlink()
    (out / "attention" / "seed0" / "results.json").unlink()
    run_ablation("mask", protocol="tiny", seeds=2, out_dir=out, doc=None, log=lambda s: None)
    assert calls == {"fit": 1, "evaluate": 2}


@pytest.mark.slow
def test_shards_split_the_runs_then_one_call_writes_the_reports(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    lines: list[str] = []
    seen = []
    real_pretrain = ablation.pretrain

    def pretrain(cfg, run_dir, log=print):
        seen.append((run_dir.parent.name, run_dir.name))
        return real_pretrain(cfg, run_dir, log)

    monkeypatch.setattr(ablation, "pretrain", pretrain)
    for i in range(2):
        assert run_ablation("mask", protocol="tiny", seeds=2, out_dir=out, doc=None, shard=(i, 2),
                            log=lines.append) is None
    # variant-major order, every other run: the two shards are disjoint and cover all 3 x 2 runs
    assert seen == [("none", "seed0"), ("random", "seed0"), ("attention", "seed0"),
                    ("none", "seed1"), ("random", "seed1"), ("attention", "seed1")]
    assert not (out / "results.json").exists() and not (out / "random_init").exists()
    assert any("rerun without --shard" in line for line in lines)
    seen.clear()
    agg = run_ablation("mask", protocol="tiny", seeds=2, out_dir=out, doc=None, log=lines.append)
    assert seen == [] and (out / "results.json").is_file() and (out / "random_init" / "results.json").is_file()
    assert [v["n_seeds"] for v in agg["variants"]] == [2, 2, 2]
    with pytest.raises(ConfigError, match="shard"):
        run_ablation("mask", protocol="tiny", seeds=2, out_dir=out, doc=None, shard=(2, 2))


@pytest.mark.slow
def test_rerun_with_another_config_is_refused(tiny_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_run[0] / "none", out / "none")
    with pytest.raises(ConfigError, match="another config"):
        run_ablation("mask", protocol="tiny", seeds=1, out_dir=out, doc=None, variants=["none"],
                     overrides=["optim.base_lr=1e-3"], log=lambda s: None)


def test_every_ablation_and_protocol_resolves():
    for name, ablation_spec in ABLATIONS.items():
        for variant in ablation_spec.variants:
            for proto in PROTOCOLS:
                if variant.refused:  # tests/test_matrix.py checks the reasons
                    with pytest.raises(ConfigError):
                        build_run_config(name, variant.name, 1, proto)
                    continue
                if variant.teacher:  # the matrix's frozen column: teacher.init from the runner's --teacher
                    with pytest.raises(ConfigError, match=r"reads a frozen pretrained teacher: pass --teacher"):
                        build_run_config(name, variant.name, 1, proto)
                cfg = build_run_config(name, variant.name, 1, proto, teacher=TINY_TEACHER if variant.teacher else None)
                assert cfg["seed"] == 1 and cfg["teacher"]["init"] == (TINY_TEACHER if variant.teacher else None)
                for item in variant.overrides:  # the variant's keys win over the protocol's
                    key, _, value = item.partition("=")
                    section, leaf = key.split(".")
                    assert str(cfg[section][leaf]).lower() == value.lower() or cfg[section][leaf] == float(value)
    gpu = build_run_config("mask", "attention", 0, "gpu")
    assert gpu["data"]["subset"] is None and gpu["model"]["depth"] is None and gpu["optim"]["epochs"] == 100
    assert build_run_config("num_p", "num8_p0.15", 0, "cpu")["mask"]["num"] == 8


def test_bad_arguments_fail_early(tmp_path):
    with pytest.raises(ConfigError, match="unknown ablation"):
        run_ablation("masks", protocol="tiny", out_dir=tmp_path, doc=None)
    with pytest.raises(ConfigError, match="unknown protocol"):
        run_ablation("mask", protocol="huge", out_dir=tmp_path, doc=None)
    with pytest.raises(ConfigError, match="unknown config key"):
        run_ablation("mask", protocol="tiny", out_dir=tmp_path, doc=None, overrides=["optim.lrr=1"])
    assert not list(tmp_path.glob("*/seed*"))  # nothing trained before the configs were checked


def test_demo_preset_is_one_run_of_the_cpu_protocol():
    """configs/fashion_mnist_vit_tiny.yaml says the demo is the cpu protocol's attention run (seed 0): keep it so."""
    from mst.experiments.runner import _preset_path
    from mst.config import _flatten

    demo = _flatten(ablation.load_config(_preset_path("fashion_mnist_vit_tiny.yaml")))
    run = _flatten(build_run_config("mask", "attention", 0, "cpu"))
    diff = {k: (demo[k], run[k]) for k in demo if not k.startswith("log.") and demo[k] != run[k]}
    assert diff == {}


def test_cli_variants_and_shard_are_checked(tmp_path, capsys):
    from mst.cli import main

    assert main(["ablate", "decoder", "--protocol", "tiny", "--out", str(tmp_path), "--variants",
                 "no_decoder,lambda9"]) == 2
    assert "unknown variants ['lambda9']" in capsys.readouterr().err
    assert main(["ablate", "mask", "--protocol", "tiny", "--out", str(tmp_path), "--shard", "2of3"]) == 2
    assert "--shard '2of3' must look like I/N" in capsys.readouterr().err
    assert main(["ablate", "mask", "--protocol", "tiny", "--out", str(tmp_path), "--shard", "3/3"]) == 2
    assert "shard=(3, 3) must be (i, n)" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/seed*"))  # nothing trained


@pytest.mark.slow
def test_report_only_reports_the_finished_runs_and_trains_nothing(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(tiny_run[0] / "none", out / "none")
    shutil.copytree(tiny_run[0] / "random" / "seed0", out / "random" / "seed0")
    monkeypatch.setattr(ablation, "pretrain", lambda *a, **k: pytest.fail("report_only pretrained"))
    monkeypatch.setattr(ablation, "evaluate", lambda *a, **k: pytest.fail("report_only evaluated"))
    agg = run_ablation("mask", protocol="tiny", seeds=2, out_dir=out, doc=None, report_only=True,
                       log=lambda s: None)
    assert [(v["variant"], v["n_seeds"]) for v in agg["variants"]] == [("none", 2), ("random", 1), ("attention", 0)]
    assert agg["random_init"] is None and not (out / "random_init").exists()
    assert json.loads((out / "results.json").read_text())["variants"][1]["seeds"] == [0]
    # one seed: its value, no "± 0.00"; the spread counts only variants with several seeds
    header, rows = _table_rows((out / "results.md").read_text())
    knn = header.index("k-NN top-1 k=20 (%)")
    assert "±" in rows["none"][knn] and "±" not in rows["random"][knn] and rows["attention"][knn] == "–"
    assert float(rows["random"][knn]) == pytest.approx(agg["variants"][1]["stats"]["knn_top1_k20"]["mean"], abs=5e-3)
    assert agg["spread"]["knn_top1_k20"]["max_std"] == agg["variants"][0]["stats"]["knn_top1_k20"]["std"]
    assert re.fullmatch(r"\d+\.\d / \d+\.\d", rows["none"][header.index("Pretraining, wall / CPU (min)")])
    with pytest.raises(ConfigError, match="exclude each other"):
        run_ablation("mask", protocol="tiny", seeds=2, out_dir=out, doc=None, report_only=True, shard=(0, 2))
