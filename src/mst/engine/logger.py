"""Run logs: metrics as JSON lines, TensorBoard scalars, and progress: a tqdm bar on a terminal, plain lines
elsewhere (a log file, CI).

What is written when:

* ``metrics.jsonl`` and TensorBoard get a record every ``log.every`` steps, and always for the first and the last
  step of every launch (the trainer passes ``force``), so even a run shorter than ``log.every`` has curves;
* on a terminal, a tqdm bar (steps, rate, ETA; epoch, loss, images/s and the data-wait share as postfix), started
  at the resumed step so its rate counts only this launch's steps. While it is drawn, Python warnings and
  ``logging`` records are written above it instead of through it;
* when the progress stream is not a terminal, no ``\\r`` bar: one plain line per record (step/total, epoch, loss,
  images/s, data wait, elapsed, ETA).
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import TextIO

from tqdm import tqdm


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """``1:02:03``-style (``12:03`` under an hour); ``?`` when unknown."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class MetricLogger:
    """Writes on the main process only. Every ``log.every`` steps (and when ``force`` is passed: the first and the
    last step of a launch) a line goes to ``metrics.jsonl`` and every scalar to TensorBoard (``tb/``); epoch-level
    results (k-NN) are written when they arrive. Progress goes to ``stream`` (default ``sys.stderr``): a tqdm bar
    if it is a terminal, else plain lines. Call :meth:`set_initial` with the step the run (re)starts from, and
    :meth:`close` at the end (it restores the warning and logging hooks the bar installs)."""

    def __init__(self, out_dir: Path, log_cfg: dict, is_main: bool, total_steps: int,
                 stream: TextIO | None = None) -> None:
        self.active = is_main
        self.every = max(1, int(log_cfg["every"]))
        self.path = Path(out_dir) / "metrics.jsonl"
        self.total = int(total_steps)
        self.stream = stream if stream is not None else sys.stderr
        self.tb = None
        self.bar = None
        self.progress = bool(log_cfg["progress"]) and is_main
        self.plain = self.progress and not is_terminal(self.stream)  # plain lines instead of a bar
        self.start_step: int | None = None
        self.start_time = time.perf_counter()
        self._old_showwarning = None
        self._hook = None
        self._log_redirect = None
        if not is_main:
            return
        if log_cfg["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tb"))

    # -- progress ------------------------------------------------------------------------------------------
    def _start(self, step: int) -> None:
        """Start counting (and drawing) at ``step``: rates and ETA cover this launch's steps only."""
        self.start_step, self.start_time = step, time.perf_counter()
        if self.progress and not self.plain and self.bar is None:
            # initial=step: tqdm's rate is (n - initial) / elapsed, so a resumed bar shows this launch's rate
            self.bar = tqdm(total=self.total, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0,
                            file=self.stream)
            self._redirect_warnings()

    def _redirect_warnings(self) -> None:
        """For the bar's lifetime: warnings and console ``logging`` records are written above the bar."""
        old = warnings.showwarning
        stream = self.stream

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if file is not None and file not in (sys.stderr, sys.stdout, stream):
                return old(message, category, filename, lineno, file, line)
            text = warnings.formatwarning(message, category, filename, lineno, line)
            tqdm.write(text.rstrip("\n"), file=stream)

        self._old_showwarning, self._hook = old, showwarning
        warnings.showwarning = showwarning
        try:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._log_redirect = logging_redirect_tqdm()
            self._log_redirect.__enter__()
        except Exception:  # noqa: BLE001 - a nicety: never fail a run over it
            self._log_redirect = None

    def _restore_warnings(self) -> None:
        if self._hook is not None and warnings.showwarning is self._hook:  # someone else's hook since: leave it
            warnings.showwarning = self._old_showwarning
        self._hook = self._old_showwarning = None
        if self._log_redirect is not None:
            self._log_redirect.__exit__(None, None, None)
            self._log_redirect = None

    def write(self, text: str) -> None:
        """A message line that does not break the bar (above it), or a plain line."""
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        elif self.progress:
            print(text, file=self.stream, flush=True)

    def wrap_log(self, log):
        """``log`` (e.g. ``print``) made safe to call while the bar is drawn: the bar is cleared around it."""
        def wrapped(*args, **kwargs):
            if self.bar is None:
                return log(*args, **kwargs)
            with tqdm.external_write_mode(file=self.stream):
                return log(*args, **kwargs)

        return wrapped

    def _plain_line(self, step: int, epoch: int, metrics: dict[str, float]) -> str:
        done = step - (self.start_step if self.start_step is not None else 0)
        elapsed = time.perf_counter() - self.start_time
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        parts = [f"step {step}/{self.total} ({100.0 * step / max(self.total, 1):.0f}%)", f"epoch {epoch}"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "images_per_s" in metrics:
            parts.append(f"{metrics['images_per_s']:.0f} img/s")
        if "data_wait" in metrics:
            parts.append(f"data wait {metrics['data_wait']:.0%}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        parts.append(f"ETA {format_duration(eta)}")
        return " | ".join(parts)

    # -- records -------------------------------------------------------------------------------------------
    def set_initial(self, step: int) -> None:
        """Resume at ``step``: drop logged records past it (a crash after the last checkpoint), start the progress
        display (bar, rate, ETA) at it."""
        if self.active and self.path.is_file():
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except json.JSONDecodeError:  # a line cut by the crash
                    continue
            self.path.write_text("".join(k + "\n" for k in keep))
        if self.active:
            self._start(step)

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def step(self, step: int, epoch: int, metrics: dict[str, float], force: bool = False) -> bool:
        """One training step done (``step`` counts from 1). Records it if ``step`` is a multiple of ``log.every``
        or ``force`` (first / last step of a launch). Returns whether it was recorded."""
        if not self.active:
            return False
        if self.start_step is None:
            self._start(step - 1)
        if self.bar is not None:
            self.bar.update(1)
            post = {"epoch": epoch}
            if "loss" in metrics:
                post["loss"] = f"{metrics['loss']:.3f}"
            if "images_per_s" in metrics:
                post["img_s"] = f"{metrics['images_per_s']:.0f}"
            if "data_wait" in metrics:
                post["data"] = f"{metrics['data_wait']:.0%}"
            self.bar.set_postfix(post, refresh=False)
        if not (force or step % self.every == 0):
            return False
        self._write({"step": step, "epoch": epoch, **metrics})
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.plain:
            print(self._plain_line(step, epoch, metrics), file=self.stream, flush=True)
        return True

    def epoch(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.active or not metrics:
            return
        self._write({"step": step, "epoch": epoch, **metrics})
        self.write("epoch " + str(epoch) + ": " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"eval/{k}", v, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._restore_warnings()
        if self.tb is not None:
            self.tb.close()
            self.tb = None
