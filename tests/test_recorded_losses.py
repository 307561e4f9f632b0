"""The recorded-loss test: the default step of every method family, a few steps each from the same seed, gives the
losses recorded before the config redesign (#27). A change of defaults, key names, the order of random draws or
the data path shows here as a different loss.

The losses are in tests/data/recorded_losses.json, written by ``python tests/test_recorded_losses.py`` (run it only
when a change is *meant* to change training, and say so in the commit). One thread, so the float sums are the
same on every run; the tolerance (1e-6 relative) allows only a different CPU's rounding, far below what any change
of a setting moves (1e-3 and more)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package, when run as a script

from tests.conftest import TINY, TINY_MAE, TINY_SIMMIM  # noqa: E402

RECORD = Path(__file__).parent / "data" / "recorded_losses.json"
STEPS = 4
# the six method families of the issue, each with its default step on the tiny model
CASES = {
    "mst": ["method=mst", *TINY],
    "dino": ["method=dino", *TINY],
    "mae": TINY_MAE,
    "simmim": TINY_SIMMIM,
    "mae_amt": [*TINY_MAE, "amt.enabled=true", "amt.start=0"],
    "mae_beyond_masking": [*TINY_MAE, "mim.degradation=zoom_in", "degrade.zoom_in=1.2857142857142858",
                           "degrade.ring_weight=0.2"],
}


def losses(case: str, out: Path) -> list[float]:
    from mst.config import load_config
    from mst.engine.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(load_config(overrides=CASES[case]), out).fit(max_steps=STEPS)
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("case", sorted(CASES))
def test_losses_equal_the_recorded_ones(case, tmp_path):
    recorded = json.loads(RECORD.read_text())[case]
    assert len(recorded) == STEPS
    assert losses(case, tmp_path) == pytest.approx(recorded, rel=1e-6, abs=0)


if __name__ == "__main__":
    import tempfile

    record = {c: losses(c, Path(tempfile.mkdtemp())) for c in sorted(CASES)}
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
