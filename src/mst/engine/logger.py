"""Run logs: metrics as JSON lines, TensorBoard scalars, and a tqdm progress bar with images/s and ETA."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm


class MetricLogger:
    """Writes on the main process only. Every ``log.every`` steps a line goes to ``metrics.jsonl`` and every
    scalar to TensorBoard (``tb/``); epoch-level results (k-NN) are written when they arrive."""

    def __init__(self, out_dir: Path, log_cfg: dict, is_main: bool, total_steps: int) -> None:
        self.active = is_main
        self.every = max(1, int(log_cfg["every"]))
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        self.bar = None
        if not is_main:
            return
        if log_cfg["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tb"))
        if log_cfg["progress"]:
            self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, mininterval=1.0)

    def set_initial(self, step: int) -> None:
        """Resume at ``step``: drop logged records past it (a crash after the last checkpoint), move the bar."""
        if self.active and self.path.is_file():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except json.JSONDecodeError:  # a line cut by the crash
                    continue
            self.path.write_text("".join(k + "\n" for k in keep))
        if self.bar is not None:
            self.bar.n = step
            self.bar.last_print_n = step
            self.bar.refresh()

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def step(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                epoch=epoch, loss=f"{metrics['loss']:.3f}", img_s=f"{metrics['images_per_s']:.0f}", refresh=False
            )
        if step % self.every == 0:
            self._write({"step": step, "epoch": epoch, **metrics})
            if self.tb is not None:
                for k, v in metrics.items():
                    self.tb.add_scalar(f"train/{k}", v, step)

    def epoch(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.active or not metrics:
            return
        self._write({"step": step, "epoch": epoch, **metrics})
        if self.bar is not None:
            self.bar.write("epoch " + str(epoch) + ": " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"eval/{k}", v, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
