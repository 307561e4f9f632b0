"""Every benchmark script in its --tiny mode (the same code at the engine's smoke-test sizes), so a change to the
engine that breaks a benchmark fails here instead of at the next measurement. Each test checks the numbers, not just
that the script ran: finite and positive, and every ratio computed from the two measurements it names."""
from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from mst.data.fashion_mnist import DEFAULT_ROOT

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
HAVE_FMNIST = Path(DEFAULT_ROOT, "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason=f"Fashion-MNIST not installed at {DEFAULT_ROOT}")


def load(name: str):
    """benchmarks/<name>.py as a module (it puts benchmarks/ on sys.path for its `common` import)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_threads():
    """The scripts set torch's thread count (1 on CPU); give the rest of the session its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def paired(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def test_flops_tiny(tmp_path):
    flops = load("flops")
    res = flops.main(["--tiny", "--json", str(tmp_path / "flops.json")])
    f = res["flops_per_step"]
    assert positive(f["dino"]) and f["mst"] > f["dino"]  # the decoder adds work
    assert res["flops_mst_over_dino"] == pytest.approx(f["mst"] / f["dino"])
    assert set(res["matmul_flops_per_s"]) == {"64", "128"}
    assert res["peak_flops_per_s"] == max(res["matmul_flops_per_s"].values())
    assert positive(res["mst_step_s"]) and res["mst_step_s"] == statistics.median(res["times"]["cpu"]["baseline"])
    assert res["achieved_flops_per_s"] == pytest.approx(f["mst"] / res["mst_step_s"])
    assert res["achieved_over_peak"] == pytest.approx(res["achieved_flops_per_s"] / res["peak_flops_per_s"])
    assert set(res["speedups"]) == {"channels_last", "threads=2"}
    wall, cpu = res["times"]["wall"], res["times"]["cpu"]
    assert all(len(t) == 2 for t in cpu.values())  # 2 rounds
    for name, s in res["speedups"].items():
        assert s["ratio_cpu"] == pytest.approx(paired(cpu[name], cpu["baseline"]))
        assert s["ratio_wall"] == pytest.approx(paired(wall[name], wall["baseline"]))
        assert positive(s["ratio"])
    saved = json.loads((tmp_path / "flops.json").read_text())
    assert saved["flops_per_step"] == f and saved["speedups"].keys() == res["speedups"].keys()


def test_flops_refuses_the_adopted_copies(capsys):
    flops = load("flops")
    for name in ("foreach_clip", "fused_adamw"):
        with pytest.raises(SystemExit):
            flops.main(["--tiny", "--try", name])
        assert "the engine adopted" in capsys.readouterr().err


def test_step_time_tiny(tmp_path):
    step_time = load("step_time")
    res = step_time.main(["--tiny", "--json", str(tmp_path / "step_time.json")])
    v = res["variants"]
    assert res["base"] == "dino" and set(v) == set(step_time.VARIANTS)  # every method and degradation ran
    for name, r in v.items():
        assert len(r["cpu_s"]) == 2 and all(positive(t) for t in r["cpu_s"] + r["wall_s"]), name
        assert r["images_per_s"] == pytest.approx(res["batch"] / r["wall_median_s"])
        assert r["ratio_vs_base_cpu"] == pytest.approx(paired(r["cpu_s"], v["dino"]["cpu_s"]))
        assert r["ratio_vs_base"] == r["ratio_vs_base_cpu"]  # one thread on CPU: CPU time is the measure
    assert res["mst_over_dino"] == v["mst"]["ratio_vs_base"]
    assert res["dino_throw_over_dino"] == v["dino_throw"]["ratio_vs_base"]
    for plain in ("mae", "simmim"):
        amt = res[f"{plain}_amt_over_{plain}"]
        assert amt["step"] == pytest.approx(paired(v[f"{plain}_amt"]["cpu_s"], v[plain]["cpu_s"]))
        assert positive(amt["refresh_s_per_image"])
        assert amt["with_refresh"] == pytest.approx(amt["step"] + amt["amortised_refresh_s_per_step"]
                                                    / v[plain]["cpu_median_s"])
    assert res["distill_over_dino"] == v["distill"]["ratio_vs_base"] and 0 < res["distill_teacher_share"] < 1
    for plain in ("mae", "mst"):  # continuing from model.init, paired with the same method from scratch
        assert res[f"{plain}_continued_over_{plain}"] == pytest.approx(
            paired(v[f"{plain}_continued"]["cpu_s"], v[plain]["cpu_s"]))
    assert json.loads((tmp_path / "step_time.json").read_text())["mst_over_dino"] == res["mst_over_dino"]


def test_memory_tiny(tmp_path):
    memory = load("memory")
    res = memory.main(["--tiny", "--json", str(tmp_path / "memory.json")])  # 4 subprocesses
    runs = res["runs"]
    assert [(r["mode"], r["batch"]) for r in runs] == [("dino", 4), ("dino", 16), ("mst+dec_ckpt", 4),
                                                       ("mst+dec_ckpt", 16)]
    for r in runs:
        assert "error" not in r, r
        assert r["checkpointing"] is True and positive(r["step_s"]) and positive(r["trained_params"])
        assert r["growth_bytes"] == r["peak_bytes"] - r["base_bytes"] and r["growth_bytes"] > 0
    slopes = {}
    for mode in ("dino", "mst+dec_ckpt"):
        s = res["summary"][f"{mode}/ckpt=1"]
        g = s["growth_bytes"]
        assert s["slope_bytes"] == pytest.approx((g[16] - g[4]) / 12)
        assert s["per_image_bytes"] == pytest.approx(g[16] / 16)
        slopes[mode] = s["slope_bytes"]
    (name, ratio), = res["ratios"].items()
    assert name == "MST with decoder checkpointed / DINO (checkpointing on)"
    if slopes["dino"] > 0:
        assert ratio == pytest.approx(slopes["mst+dec_ckpt"] / slopes["dino"])
    else:
        assert math.isnan(ratio)
    assert json.loads((tmp_path / "memory.json").read_text())["ratios"].keys() == res["ratios"].keys()


def test_data_loading_tiny(tmp_path):
    data_loading = load("data_loading")
    res = data_loading.main(["--tiny", "--json", str(tmp_path / "data_loading.json")])
    p = res["preset"]
    assert p["data"] == ("real" if HAVE_FMNIST else "synthetic") and p["batch"] == 8
    assert positive(p["pil_ms_per_sample"]) and positive(p["step_s"])
    assert p["consume_images_per_s"] == pytest.approx(8 / p["step_s"])
    assert set(p["supply_images_per_s"]) == {"0", "1"}
    for w, rate in p["supply_images_per_s"].items():
        assert positive(rate)
        assert p["supply_over_consume"][w] == pytest.approx(rate / p["consume_images_per_s"])
    if HAVE_FMNIST:  # the Trainer's own loader on the real data
        assert all(positive(x) for x in p["end_to_end_images_per_s"]["0"])
    assert p["gpu_augment_over_pil_per_core"] == pytest.approx(
        p["gpu_augment_images_per_s"] / (1e3 / p["pil_ms_per_sample"]))
    big = res["big"]
    assert positive(big["pil_ms_per_image"]) and positive(big["decode_ms_per_image"])
    assert big["workers_needed_pil"] == pytest.approx(big["gpu_rate_assumed"] * big["pil_ms_per_image"] / 1e3)
    assert big["workers_needed_decode_only"] == pytest.approx(big["gpu_rate_assumed"] * big["decode_ms_per_image"] / 1e3)
    own = res["own_images"]
    assert [rows[0]["channels"] for rows in own.values()] == [3, 13]  # the JPEG and the 13-band TIFF folder
    for rows in own.values():
        (row,) = rows
        assert row["num_workers"] == 0 and positive(row["supply img/s"])
        assert 0 <= row["data wait (share of step)"] <= 1
    assert json.loads((tmp_path / "data_loading.json").read_text())["big"] == big


def test_peer_mae_tiny(tmp_path):
    peer_mae = load("peer_mae")
    res = peer_mae.main(["--tiny", "--json", str(tmp_path / "peer_mae.json")])
    rows = {r["step"]: r for r in res["rows"]}
    ours = rows["mst mae"]  # the engine's Trainer.train_batch on the MAE preset
    assert positive(ours["median (ms)"]) and ours["images/s"] == pytest.approx(8e3 / ours["median (ms)"])
    assert len(res["times"]["wall"]["mst mae"]) == 2
    if importlib.util.find_spec("lightly") is None:
        assert res["ratio"] is None and "pip install" in res["peer"] and set(rows) == {"mst mae"}
    else:
        wall = res["times"]["wall"]
        assert res["ratio"] == pytest.approx(paired(wall["mst mae"], wall["lightly mae"]))
    assert json.loads((tmp_path / "peer_mae.json").read_text())["ratio"] == res["ratio"]


def test_peer_mae_lightly_step():
    """The peer's step on the tiny MAE config (only where lightly is installed: it is no dependency of mst)."""
    pytest.importorskip("lightly")
    import timm

    from mst.config import load_config
    from mst.models.backbones import timm_spec

    peer_mae, common = load("peer_mae"), load("common")
    path = common.METHOD_CONFIGS["mae"]
    cfg = load_config(path, common.tiny_overrides(path))
    name, kwargs = timm_spec(cfg["model"], 1)
    vit = timm.create_model(name, pretrained=False, **kwargs)
    before = [q.detach().clone() for q in vit.parameters()]
    peer_mae.peer_step_fn(vit, torch.randn(4, 1, 28, 28), cfg)()
    assert any(not torch.equal(a, q) for a, q in zip(before, vit.parameters()))  # it trained the shared ViT


@needs_fmnist
def test_plain_finetune_tiny(tmp_path):
    plain = load("plain_finetune")
    res = plain.main(["--tiny", "--json", str(tmp_path / "plain.json")])  # a tiny MAE checkpoint, 1 epoch
    assert res["train_images"] == 20 and res["test_images"] == 100 and res["steps"] == 3  # ceil(20 / 8)
    assert 0 <= res["top1"] <= 100 and positive(res["final_loss"]) and positive(res["wall_s"])
    assert not res["random_init"]  # the checkpoint's backbone was loaded (strictly, but for the head)
    assert json.loads((tmp_path / "plain.json").read_text()) == res


def test_plain_finetune_needs_a_checkpoint():
    with pytest.raises(SystemExit):
        load("plain_finetune").main([])
