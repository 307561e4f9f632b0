import json

import pytest
import torch

from mst.checkpoint import load_checkpoint
from mst.engine.trainer import NonFiniteLossError, Trainer
from mst.methods import METHODS, build_method
from mst.methods.mst import student_teacher
from mst.settings import Config
from mst.registry import ConfigError
from tests.conftest import TINY, make_tiny_cfg, step


def losses(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_step_gradients_reach_mask_token_and_decoder_not_teacher():
    cfg = make_tiny_cfg("mask.p=1.0", "mask.num=2")
    torch.manual_seed(0)
    method = build_method(cfg)
    student, teacher = method.student, method.teacher
    views = [torch.randn(4, 1, 28, 28) for _ in range(2)] + [torch.randn(4, 1, 12, 12) for _ in range(2)]
    out = step(method, views)
    # p=1, num=2: exactly half of the 49 tokens (24) are masked in every global view
    assert out.mask.shape == (8, 49) and (out.mask.sum(1) == 24).all()
    assert out.metrics["mask_ratio"] == pytest.approx(24 / 49)
    expect = out.metrics["loss_ce"] + 0.6 * out.metrics["loss_restore"]
    assert out.metrics["loss"] == pytest.approx(expect, rel=1e-6)
    out.loss.backward()
    assert student.backbone.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in student.decoder.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_head_bn_statistics_from_global_views_only():
    cfg = make_tiny_cfg("dino.use_bn=true", "model.drop_path=0.0")
    torch.manual_seed(0)
    student, teacher = student_teacher(Config.of(cfg))
    g = [torch.randn(4, 1, 28, 28) for _ in range(2)]
    locals_ = [torch.randn(4, 1, 12, 12) * 5 + 3 for _ in range(2)]
    bn = student.head.mlp[1]
    student(torch.cat(g), None, n_global=2, n_local=0)
    after_global = bn.running_mean.clone()
    torch.manual_seed(0)
    student2, _ = student_teacher(Config.of(cfg))
    student2(torch.cat(g), torch.cat(locals_), n_global=2, n_local=2)
    # adding local crops must not change the running statistics
    assert torch.allclose(student2.head.mlp[1].running_mean, after_global, atol=1e-6)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    cfg = make_tiny_cfg()
    full = Trainer(cfg, tmp_path / "full")
    assert full.fit() == "done"
    part = Trainer(cfg, tmp_path / "part")
    assert part.fit(max_steps=5) == "max_steps"  # mid-epoch 0 (8 steps per epoch)
    ck = load_checkpoint(tmp_path / "part")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (0, 5, 5)
    assert part.call_steps == 5
    resumed = Trainer(cfg, tmp_path / "part")
    assert resumed.fit() == "done"
    assert (resumed.call_steps, resumed.global_step) == (11, 16)  # this call's steps: after the checkpoint
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 17))
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6), ra["step"]
    ta, tb = load_checkpoint(tmp_path / "full")["method"], load_checkpoint(tmp_path / "part")["method"]
    assert any(k.startswith("teacher.") for k in ta) and "dino_loss.center" in ta
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=1e-5), k
    assert (tmp_path / "full" / "config.yaml").is_file()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = make_tiny_cfg("log.checkpoint_every_steps=2")
    calls = {"n": 0}
    real_forward = METHODS.get("mst").forward

    def nan_after_three(self, batch, ctx):
        out = real_forward(self, batch, ctx)
        calls["n"] += 1
        if calls["n"] == 4:
            out.loss = out.loss * float("nan")
            out.metrics["loss"] = float("nan")
        return out

    monkeypatch.setattr(METHODS.get("mst"), "forward", nan_after_three)
    tr = Trainer(cfg, tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, step 3.*last good checkpoint"):
        tr.fit()
    ck = load_checkpoint(tmp_path / "run")
    assert ck["global_step"] == 2  # written after step 2; the NaN step wrote nothing
    assert all(torch.isfinite(v).all() for v in ck["method"].values() if v.is_floating_point())


def test_tensor_augment_backend_trains_and_resumes(tmp_path):
    cfg = make_tiny_cfg("augment.backend=tensor")
    full = Trainer(cfg, tmp_path / "full")
    assert full.fit(max_steps=4) == "max_steps"
    part = Trainer(cfg, tmp_path / "part")
    part.fit(max_steps=2)
    Trainer(cfg, tmp_path / "part").fit(max_steps=2)
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    assert all(r["loss"] == r["loss"] for r in a)  # finite


def test_resume_refuses_a_changed_configuration(tmp_path):
    Trainer(make_tiny_cfg(), tmp_path / "run").fit(max_steps=2)
    other = Trainer(make_tiny_cfg("mask.num=4", "log.every=5"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"trained with other settings \(mask.num: 8 -> 4\): relaunch with "
                                          r"the settings .* of mask.num\) to resume it, or pass a new --out"):
        other.fit()
    # log settings may change: it resumes, and the metrics file keeps one line per step
    Trainer(make_tiny_cfg("log.every=1", "log.knn_every=0"), tmp_path / "run").fit(max_steps=1)
    assert [r["step"] for r in losses(tmp_path / "run")] == [1, 2, 3]


def test_a_relaunch_with_a_changed_setting_is_one_line(tmp_path, capsys):
    """The CLI prints the refused resume as every other bad input: one line, the keys and the two ways out."""
    from mst.cli import main

    args = ["pretrain", "--out", str(tmp_path / "run"), "--max-steps", "1"] + [a for o in TINY for a in ("--set", o)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--set", "optim.base_lr=1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "optim.base_lr: 0.0005 -> 0.001" in err and "pass a new --out" in err


def test_cli_max_steps_counts_the_whole_run(tmp_path, capsys):
    """`--max-steps N` is the run's total: a relaunch at step 2 with --max-steps 3 trains one step, not three."""
    from mst.cli import main

    args = ["pretrain", "--out", str(tmp_path / "run")] + [a for o in TINY for a in ("--set", o)]
    assert main(args + ["--max-steps", "2"]) == 0
    assert main(args + ["--max-steps", "3"]) == 0
    assert [r["step"] for r in losses(tmp_path / "run")] == [1, 2, 3]
    capsys.readouterr()
    assert main(args + ["--max-steps", "3"]) == 0
    assert "has already trained 3 steps" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run")["global_step"] == 3


def test_failing_online_evaluation_keeps_the_epoch(tmp_path):
    cfg = make_tiny_cfg("log.knn_every=1", "optim.epochs=1")
    messages = []

    def broken(trainer):
        raise ValueError("no labels here")

    tr = Trainer(cfg, tmp_path / "run", log=messages.append)
    assert tr.fit(evaluator=broken) == "done"
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1
    assert any("online evaluation at epoch 1 failed (ValueError: no labels here)" in m for m in messages)


def test_metrics_after_crash_are_truncated_to_the_checkpoint(tmp_path):
    cfg = make_tiny_cfg("log.checkpoint_every_steps=2")
    Trainer(cfg, tmp_path / "run").fit(max_steps=3)  # checkpoint at step 2, then at 3 (max_steps)
    path = tmp_path / "run" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 4, "epoch": 0, "loss": 1.0}\n{"step": 5, "ep')  # a crash
    Trainer(cfg, tmp_path / "run").fit(max_steps=1)
    assert [r["step"] for r in losses(tmp_path / "run")] == [1, 2, 3, 4]
