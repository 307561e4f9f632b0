"""SIGTERM / SIGINT: finish the step, write the checkpoint, exit cleanly; the next launch resumes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mst.checkpoint import load_checkpoint
from tests.conftest import TINY

ROOT = os.path.dirname(os.path.dirname(__file__))


def launch(out, *extra):
    args = [sys.executable, "-m", "mst", "pretrain", "--out", str(out)]
    for o in TINY + ["optim.epochs=50"]:
        args += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(ROOT, "src")}
    return subprocess.Popen(args + list(extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def steps_logged(out):
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(l)["step"] for l in path.read_text().splitlines() if l.strip()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_resumes(tmp_path, sig):
    out = tmp_path / "run"
    proc = launch(out)
    deadline = time.time() + 120
    while len(steps_logged(out)) < 3:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(sig)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, text
    assert f"{signal.Signals(sig).name} received: checkpoint written" in text
    ck = load_checkpoint(out)
    logged = steps_logged(out)
    assert ck["global_step"] == logged[-1]  # the step in flight was finished and saved, nothing lost
    assert ck["step_in_epoch"] == ck["global_step"] % 8 and ck["epoch"] == ck["global_step"] // 8

    again = launch(out, "--max-steps", str(logged[-1] + 2))  # --max-steps counts the whole run
    text2, _ = again.communicate(timeout=120)
    assert again.returncode == 0, text2
    assert f"resumed from {out / 'checkpoint.pt'}" in text2
    assert steps_logged(out)[-2:] == [logged[-1] + 1, logged[-1] + 2]
