"""Run logs: first/last steps always recorded, data-wait share, progress without a terminal, training longer on
resume, and the one-line errors of a batch larger than the data or fewer epochs than trained."""
import io
import json
import re
import time
import warnings

import pytest

from mst.checkpoint import load_checkpoint
from mst.cli import main
from mst.engine.logger import MetricLogger
from mst.engine.trainer import Trainer, check_batch_fits
from mst.eval.visualize import plot_curves_if_any
from mst.registry import ConfigError
from tests.conftest import TINY, make_tiny_cfg


def records(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def cli_args(out, *extra):
    args = ["pretrain", "--out", str(out)]
    for o in TINY + list(extra):
        args += ["--set", o]
    return args


def test_first_and_last_step_logged_whatever_log_every(tmp_path):
    cfg = make_tiny_cfg("optim.epochs=1", "log.every=50")  # 8 steps, fewer than log.every
    assert Trainer(cfg, tmp_path / "run").fit(max_steps=3) == "max_steps"
    assert [r["step"] for r in records(tmp_path / "run")] == [1, 3]  # first and last step of this launch
    assert Trainer(cfg, tmp_path / "run").fit() == "done"
    recs = records(tmp_path / "run")
    assert [r["step"] for r in recs] == [1, 3, 4, 8]  # the resumed launch: its first and the run's last step
    for r in recs:
        assert 0.0 <= r["data_wait"] <= 1.0 and r["images_per_s"] > 0 and r["loss"] == r["loss"]
        # the step's time and its throughput are one measurement (global batch = per-rank batch on one process)
        assert r["images_per_s"] * r["step_ms"] / 1000 == pytest.approx(cfg["optim"]["batch_size"])


def test_data_wait_share_grows_with_a_slow_loader(tmp_path, monkeypatch):
    cfg = make_tiny_cfg("optim.epochs=1")
    tr = Trainer(cfg, tmp_path / "run")
    real = tr.pipeline.to_batch

    def slow(*a, **k):  # the batch takes 0.3 s more to reach the device
        time.sleep(0.3)
        return real(*a, **k)

    monkeypatch.setattr(tr.pipeline, "to_batch", slow)
    tr.fit(max_steps=3)
    waits = [r["data_wait"] for r in records(tmp_path / "run")]
    assert len(waits) == 3 and all(0.0 <= w <= 1.0 for w in waits)
    assert min(waits) > 0.05  # a tiny step takes well under 5 s


def test_plain_progress_lines_when_not_a_terminal(tmp_path, capsys):
    cfg = make_tiny_cfg("optim.epochs=1", "log.progress=true", "log.every=4")
    Trainer(cfg, tmp_path / "run").fit()
    out, err = capsys.readouterr()
    assert "\r" not in out + err
    lines = [l for l in err.splitlines() if l.startswith("step ")]
    assert [l.split()[1] for l in lines] == ["1/8", "4/8", "8/8"]
    assert all("epoch 0" in l and "img/s" in l and "data wait" in l and "ETA" in l for l in lines)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_resumed_bar_counts_only_this_launch_and_warnings_go_above_it(tmp_path):
    stream = FakeTerminal()
    logger = MetricLogger(tmp_path, {"every": 10, "tensorboard": False, "progress": True}, True, total_steps=2000,
                          stream=stream)
    old_hook = warnings.showwarning
    logger.set_initial(1000)
    assert logger.bar is not None and logger.bar.n == logger.bar.initial == 1000
    time.sleep(0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logger.step(1001, 3, {"loss": 1.0, "images_per_s": 10.0, "data_wait": 0.25})
        warnings.warn("a warning while the bar is drawn")
        logger.step(1002, 3, {"loss": 1.0, "images_per_s": 10.0, "data_wait": 0.25})
    d = logger.bar.format_dict
    assert d["n"] - d["initial"] == 2
    assert (d["n"] - d["initial"]) / d["elapsed"] < 1000  # not 1002 steps in a few milliseconds
    logger.close()
    assert warnings.showwarning is old_hook  # restored
    text = stream.getvalue()
    segments = re.split(r"[\r\n]", text)  # the warning is a line of its own, not glued to the bar
    assert any(seg.endswith("UserWarning: a warning while the bar is drawn") for seg in segments)


def test_resume_with_more_epochs_continues(tmp_path):
    run = tmp_path / "run"
    Trainer(make_tiny_cfg("optim.epochs=1"), run).fit()
    assert load_checkpoint(run)["epoch"] == 1
    messages = []
    assert Trainer(make_tiny_cfg("optim.epochs=2", "log.every=50"), run, log=messages.append).fit() == "done"
    ck = load_checkpoint(run)
    assert (ck["epoch"], ck["global_step"], ck["config"]["optim"]["epochs"]) == (2, 16, 2)
    assert [r["step"] for r in records(run)] == list(range(1, 9)) + [9, 16]
    line = [m for m in messages if "optim.epochs 1 -> 2" in m]
    assert len(line) == 1 and "rebuilt for 2 epochs" in line[0] and "momentum" in line[0]


def test_resume_with_fewer_epochs_than_trained_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(cli_args(run, "optim.epochs=2", "log.every=50") + ["--max-steps", "9"]) == 0
    assert (load_checkpoint(run)["epoch"], load_checkpoint(run)["step_in_epoch"]) == (1, 1)
    saved = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(cli_args(run, "optim.epochs=1")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: optim.epochs=1 is fewer than") and "optim.epochs >= 2" in err
    assert (run / "config.yaml").read_text() == saved  # the refused resume wrote nothing
    with pytest.raises(ConfigError, match="optim.epochs=1"):
        Trainer(make_tiny_cfg("optim.epochs=1"), run).fit()


def test_batch_larger_than_dataset_is_a_one_line_error(tmp_path, capsys):
    assert main(cli_args(tmp_path / "run", "optim.batch_size=100")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "optim.batch_size=100" in err and "64 images" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match=r"4 processes x 8 = 32 images per step.*20 images \(5 per process\)"):
        check_batch_fits(8, 20, world_size=4)
    check_batch_fits(8, 32, world_size=4)


def test_visualize_says_why_curves_are_skipped(tmp_path):
    notes = []
    assert plot_curves_if_any(tmp_path, tmp_path / "c.png", notes.append) is None
    assert len(notes) == 1 and "training curves skipped" in notes[0] and "no metrics.jsonl" in notes[0]
    (tmp_path / "metrics.jsonl").write_text("")
    notes.clear()
    assert plot_curves_if_any(tmp_path, tmp_path / "c.png", notes.append) is None
    assert len(notes) == 1 and "no numeric metrics" in notes[0]
    assert not (tmp_path / "c.png").exists()
