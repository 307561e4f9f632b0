"""The training loop, for any registered method: set-up, resume, the optimisation around ``method(batch, ctx)``,
checkpoints, logs, stops.

Reproducibility: every step reseeds torch, numpy and ``random`` from (seed, global step, rank), and every sample's
augmentation is seeded from (seed, epoch, index) (or per step on the tensor backend), so a run resumed from a
checkpoint repeats the losses of an uninterrupted one.

Training longer: relaunching on the same run directory with a larger ``optim.epochs`` (a finished run, or an
interrupted one) continues it to the new number of epochs. The lr / wd / teacher-momentum schedules (and any other
schedule tied to ``optim.epochs``, e.g. the teacher temperature) are rebuilt for the new length, so the steps that
follow differ from a run planned that long from the start; the trainer says so in one line. Fewer epochs than the
checkpoint has already trained is an error (:class:`~mst.registry.ConfigError`).

Logs: see :mod:`mst.engine.logger`; each step's record also holds ``images_per_s``, ``step_ms`` and ``data_wait``, the share
of the step (from the end of the previous one) spent waiting for its batch: fetching it from the DataLoader and
moving it to the device (with the tensor backend: augmenting it there). On CUDA the copy and augmentation kernels
are queued asynchronously, so ``data_wait`` counts the host side of them.
"""
from __future__ import annotations

import math
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mst.config import save_config
from mst.data import Batch, DataError, build_dataset, build_pipeline
from mst.checkpoint import CHECKPOINT_NAME, load_checkpoint, method_checkpoint, save_checkpoint
from mst.engine.distributed import (
    DistInfo,
    ResumableSampler,
    all_reduce_flags,
    average_across_ranks,
    barrier,
    check_same_length,
    init_distributed,
)
from mst.engine.continued import continued_groups, freeze_for_run, init_backbones
from mst.engine.ema import TeacherEMA, unwrap
from mst.engine.logger import MetricLogger
from mst.engine.optim import build_optimizer, clip_gradients, set_lr_wd
from mst.schedules import build_schedules
from mst.methods.base import EpochData, StepContext, build_method, same_training
from mst.registry import ConfigError
from mst.settings import spec


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class _StopRequest:
    """SIGTERM / SIGINT -> finish the current step, checkpoint, exit (SLURM-style preemption)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no handlers, nothing to restore
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _resumable(name: str) -> bool:
    """A key a resumed run may change (its field says ``resumable``: it does not change what is trained)."""
    s = spec(name)
    return s is not None and s.resumable


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for each setting that differs and may not change on resume (:func:`_resumable`)."""
    out = []
    for key in sorted(set(old) | set(new)):
        name = prefix + key
        if key not in old:  # a key newer than the run's version: its default keeps the old behaviour
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, name + ".")
        elif a != b and not _resumable(name) and not (name == "method" and same_training(a, b)):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def check_batch_fits(batch_size: int, n_images: int, world_size: int = 1) -> None:
    """Training drops the last incomplete batch of each process (as DINO does): a batch larger than the data would
    leave an epoch with no step. One-line :class:`ConfigError` before anything trains."""
    if n_images >= batch_size * world_size:
        return
    if world_size > 1:
        share = n_images // world_size
        fix = f"lower optim.batch_size to at most {share} (or add images)" if share else "add images"
        raise ConfigError(
            f"optim.batch_size={batch_size} is per process: {world_size} processes x {batch_size} = "
            f"{batch_size * world_size} images per step, but the dataset has {n_images} images "
            f"({share} per process), so an epoch would have no full batch; {fix}")
    raise ConfigError(
        f"optim.batch_size={batch_size} is larger than the dataset ({n_images} images): incomplete batches are "
        f"dropped, so an epoch would have no step; lower optim.batch_size to at most {n_images} (or add images)")


def epochs_change_message(old_epochs: int, new_epochs: int, epoch: int, step_in_epoch: int,
                          schedules=("lr", "wd")) -> str:
    """The one line a run resumed with another ``optim.epochs`` prints."""
    where = f"epoch {epoch}" + (f", step {step_in_epoch}" if step_in_epoch else "")
    names = " / ".join(schedules)
    verb = "longer" if new_epochs > old_epochs else "shorter"
    return (f"optim.epochs {old_epochs} -> {new_epochs}: training {verb}, continuing from {where} to epoch "
            f"{new_epochs}; the {names} schedules (and any other tied to optim.epochs) are rebuilt for {new_epochs} "
            f"epochs, so from here the run differs from one planned for {new_epochs} epochs from the start")


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def autocast_context(amp: str, device: torch.device):
    """bf16 / fp16 autocast on GPU; on CPU fp32, or bf16 when asked for explicitly (``optim.amp=bf16``: CPUs with
    AMX / AVX-512 bf16; at the CPU presets' tiny sizes it measured slower than fp32, so ``auto`` keeps fp32).
    Returns (context, GradScaler or None)."""
    if device.type == "cpu" and amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16), None
    if device.type != "cuda" or amp == "none":
        return nullcontext(), None
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return torch.autocast("cuda", dtype=dtype), scaler


class Trainer:
    """Builds the method and everything around it from a resolved config and trains into ``out_dir`` (resuming if
    it holds a checkpoint). Knows nothing of any method's losses, heads or teachers."""

    def __init__(self, cfg: dict, out_dir: str | Path, dist_info: DistInfo | None = None, log=print) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist = dist_info or init_distributed()
        self.log = log if self.dist.is_main else (lambda *a, **k: None)
        self.device = self.dist.device
        torch.manual_seed(cfg["seed"])
        o = cfg["optim"]

        self.method = build_method(cfg)
        self.init_record = None  # where the weights started (model.init); a resume keeps its checkpoint's
        if cfg["model"].get("init") and not (self.out / CHECKPOINT_NAME).is_file():
            self.init_record = init_backbones(self.method, cfg["model"]["init"])
            self.log(f"started {', '.join(self.method.backbones)} from {self.init_record['source']} "
                     f"(sha256 {self.init_record['sha256'][:12]}); the heads, decoders and [MASK] are new")
        base = build_dataset(cfg["data"], min_size=int(cfg["model"]["img_size"]))  # reject too-small images
        if self.method.needs_labels and (len(base) == 0 or int(np.min(getattr(base, "targets", [-1]))) < 0):
            raise DataError(f"method {cfg['method']} trains on labels, but data.name={cfg['data']['name']} has none "
                            "(use image_folder with class subfolders, or fashion_mnist)")
        self.base_dataset = base
        self.pipeline = build_pipeline(self.method.views, cfg, base, getattr(self.method, "view_size", None))
        check_same_length(len(self.pipeline.dataset), self.device)  # ranks that skipped different files deadlock
        check_batch_fits(int(o["batch_size"]), len(self.pipeline.dataset), self.dist.world_size)
        self.sampler = ResumableSampler(
            len(self.pipeline.dataset), o["batch_size"], self.dist.rank, self.dist.world_size, seed=cfg["seed"]
        )
        self.iters_per_epoch = self.sampler.batches_per_epoch

        self.method.to(self.device)
        self.model = self.method
        if self.dist.world_size > 1:
            if self.device.type == "cuda":  # SyncBatchNorm is CUDA-only; on CPU (gloo) BN stays per process
                self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.method, device_ids=ids)
            self.method = unwrap(self.model)
        if o["compile"]:
            self.model = torch.compile(self.model)
        self.emas = [TeacherEMA(online, averaged) for online, averaged in self.method.ema_pairs()]
        if int(o["freeze_blocks"]) >= 0 and int(o["freeze_epochs"]) == 0:
            freeze_for_run(self.method, int(o["freeze_blocks"]))  # the whole run: out of the optimizer and backward
        groups = continued_groups(self.method, self.method.param_groups(), float(o["layer_decay"]),
                                  int(o["freeze_blocks"]), int(o["freeze_epochs"]))
        self.optimizer = build_optimizer(groups, o["betas"])
        self.amp_ctx, self.scaler = autocast_context(o["amp"], self.device)
        self.schedules = build_schedules(cfg, self.iters_per_epoch, self.dist.world_size)
        self.schedules.update(self.method.schedules(self.iters_per_epoch, int(o["epochs"])))
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.ckpt_path = self.out / CHECKPOINT_NAME

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        return method_checkpoint(
            self.method,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            global_step=self.global_step,
            world_size=self.dist.world_size,
            init=self.init_record,
        )

    def save(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.state(), self.ckpt_path)
        barrier()

    def try_resume(self) -> bool:
        found = self.ckpt_path.is_file()
        if any(all_reduce_flags([found], self.device)) and not found:
            raise RuntimeError(f"rank {self.dist.rank} cannot see {self.ckpt_path} while another rank resumes from "
                               "it: the run directory must be shared by all processes")
        if not found:
            return False
        ckpt = load_checkpoint(self.ckpt_path, map_location=self.device)
        changed = [c for c in config_changes(ckpt["config"], self.cfg) if not c.startswith("optim.epochs:")]
        if changed:
            keys = ", ".join(c.split(":", 1)[0] for c in changed)
            raise ConfigError(
                f"{self.ckpt_path} was trained with other settings ({'; '.join(changed)}): relaunch with the "
                f"settings it was trained with (drop the --set / preset change of {keys}) to resume it, or pass a "
                "new --out to start a new run with these")
        old_epochs, new_epochs = int(ckpt["config"]["optim"]["epochs"]), int(self.cfg["optim"]["epochs"])
        epochs_msg = None
        if old_epochs != new_epochs:  # training longer (or ending an unfinished run sooner)
            done, partial = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
            if new_epochs < done or (new_epochs == done and partial):
                trained = f"{done} epochs" + (f" and {partial} steps of epoch {done}" if partial else "")
                least = done + 1 if partial else done
                raise ConfigError(
                    f"optim.epochs={new_epochs} is fewer than {self.ckpt_path} has already trained ({trained}); "
                    f"set optim.epochs >= {least} to continue it, or pass a new --out")
            epochs_msg = epochs_change_message(old_epochs, new_epochs, done, partial, tuple(self.schedules))
        self.method.load_state_dict(ckpt["method"])
        self.init_record = ckpt.get("init")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.global_step = ckpt["global_step"]
        if ckpt.get("world_size", 1) != self.dist.world_size:
            if self.step_in_epoch:
                self.log(f"warning: resuming mid-epoch with {self.dist.world_size} processes instead of "
                         f"{ckpt['world_size']}: this epoch restarts from its beginning")
            self.step_in_epoch = 0
            self.global_step = self.epoch * self.iters_per_epoch  # the schedules are per iteration of *this* run
        self.log(f"resumed from {self.ckpt_path} at epoch {self.epoch}, step {self.step_in_epoch}")
        if epochs_msg:
            self.log(epochs_msg)
        return True

    # -- training ------------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        self.pipeline.set_epoch(self.epoch)
        return DataLoader(
            self.pipeline.dataset,
            batch_size=self.cfg["optim"]["batch_size"],
            sampler=self.sampler,
            num_workers=int(self.cfg["data"]["num_workers"]),
            collate_fn=self.pipeline.collate,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )

    def prepare_batch(self, loaded) -> Batch:
        """Reseed every generator for this step, then turn what the DataLoader yields into a Batch on the device
        (the tensor backend augments here, on its own seeded stream)."""
        seed = step_seed(self.cfg["seed"], self.global_step, self.dist.rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # timm's Mixup draws from numpy, RandomErasing from random
        random.seed(seed)
        gen = torch.Generator(self.device).manual_seed(seed ^ 0x5DEECE66D)  # augmentation: its own stream
        return self.pipeline.to_batch(loaded, self.device, gen)

    def train_step(self, loaded) -> dict[str, float]:
        """:meth:`prepare_batch`, then :meth:`train_batch`."""
        return self.train_batch(self.prepare_batch(loaded))

    def train_batch(self, batch: Batch) -> dict[str, float]:
        """One optimisation step on a ready batch: schedules, the method's loss, backward, clip, the method's
        after-backward hook, optimizer, EMA. (Benchmarks feed synthetic batches here.)"""
        it = self.global_step
        values = {k: float(v[it]) for k, v in self.schedules.items()}
        set_lr_wd(self.optimizer, values["lr"], values["wd"], self.epoch)
        ctx = StepContext(epoch=self.epoch, step=it, values=values)
        with self.amp_ctx:
            out = self.model(batch, ctx)
        finite = math.isfinite(out.metrics["loss"])
        (any_bad,) = all_reduce_flags([not finite], self.device)
        if any_bad:
            kept = (f"The last good checkpoint is kept at {self.ckpt_path}." if self.ckpt_path.is_file()
                    else "No checkpoint had been written yet.")
            raise NonFiniteLossError(
                f"loss is {out.metrics['loss']} at epoch {self.epoch}, step {self.step_in_epoch} "
                f"(global step {it}); stopped. {kept} "
                "Try a lower optim.base_lr, optim.amp=bf16 or none, or a smaller optim.clip_grad."
            )
        self.optimizer.zero_grad(set_to_none=True)
        o = self.cfg["optim"]
        if self.scaler is not None:
            self.scaler.scale(out.loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            out.loss.backward()
        clip_gradients(self.method, float(o["clip_grad"]), o["clip_mode"])
        self.method.after_backward(ctx)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        for ema in self.emas:
            ema.update(values["momentum"])
        metrics = average_across_ranks(out.metrics, self.device)
        return {**metrics, **values}

    def _epoch_start(self, logger: MetricLogger) -> None:
        data = EpochData(self.base_dataset, self.device, self.dist.rank, self.dist.world_size, self.log)
        metrics = self.method.on_epoch_start(self.epoch, data)
        if metrics:
            logger.epoch(self.global_step, self.epoch, metrics)

    def fit(self, max_steps: int | None = None, evaluator=None, until_step: int | None = None) -> str:
        """Train to the configured number of epochs. Returns "done", "preempted" or "max_steps".

        ``max_steps`` stops after that many steps of this call (tests, benchmarks); ``until_step`` once the run has
        trained that many steps in all, resumed launches included (the CLI's ``--max-steps``); ``evaluator(trainer)`` runs
        at epoch ends where ``log.knn_every`` says and returns metrics to log. The first and the last step of
        every call are always logged, whatever ``log.every``."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.try_resume()  # before writing config.yaml: a refused resume leaves the run directory as it was
        if self.dist.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        if until_step is not None and self.global_step >= until_step:
            self.call_steps = 0
            self.log(f"{self.ckpt_path} has already trained {self.global_step} steps (--max-steps {until_step} counts "
                     "every launch of the run): nothing to do; raise --max-steps to train on")
            return "max_steps"
        epochs = int(self.cfg["optim"]["epochs"])
        logger = MetricLogger(self.out, self.cfg["log"], self.dist.is_main, total_steps=epochs * self.iters_per_epoch)
        logger.set_initial(self.global_step)
        plain_log = self.log
        self.log = logger.wrap_log(plain_log)  # messages during training do not break the progress bar
        batch_global = self.cfg["optim"]["batch_size"] * self.dist.world_size
        self.call_steps, status = 0, "done"  # steps of this call (a resumed run counts from its checkpoint)
        every_n = int(self.cfg["log"]["checkpoint_every_steps"])
        self.method.train()
        try:
            with _StopRequest() as stop:
                while self.epoch < epochs:
                    self._epoch_start(logger)
                    # step time: end of the previous step -> end of this one; data wait: fetching the batch and
                    # moving it to the device (the first step of an epoch also waits for the loader to start)
                    t_last = t_fetch = time.perf_counter()
                    batches = iter(self._loader())
                    while True:
                        try:
                            loaded = next(batches)
                        except StopIteration:
                            break
                        batch = self.prepare_batch(loaded)
                        t_ready = time.perf_counter()
                        metrics = self.train_batch(batch)
                        del batch, loaded
                        self.step_in_epoch += 1
                        self.global_step += 1
                        self.call_steps += 1
                        now = time.perf_counter()
                        step_time = max(now - t_last, 1e-9)
                        metrics["images_per_s"] = batch_global / step_time
                        metrics["step_ms"] = 1000.0 * step_time
                        metrics["data_wait"] = min(1.0, max(0.0, (t_ready - t_fetch) / step_time))
                        t_last = now
                        stop_now, = all_reduce_flags([stop.requested], self.device)
                        hit_max = (max_steps is not None and self.call_steps >= max_steps
                                   or until_step is not None and self.global_step >= until_step)
                        last = self.epoch == epochs - 1 and self.step_in_epoch == self.iters_per_epoch
                        logger.step(self.global_step, self.epoch, metrics,
                                    force=self.call_steps == 1 or last or hit_max or stop_now)
                        if stop_now:
                            self.save()
                            self.log(f"\n{stop.signal_name or 'stop signal'} received: checkpoint written to "
                                     f"{self.ckpt_path} at epoch {self.epoch}, step {self.step_in_epoch}. "
                                     "Relaunch the same command to resume.")
                            return "preempted"
                        if every_n and self.global_step % every_n == 0:
                            self.save()
                        if hit_max:
                            status = "max_steps"
                            break
                        t_fetch = time.perf_counter()
                    if status == "max_steps" and self.step_in_epoch < self.iters_per_epoch:
                        self.save()
                        return status
                    self.epoch += 1
                    self.step_in_epoch = 0
                    self.save()  # before evaluating: a failing evaluation never costs the epoch
                    knn_every = int(self.cfg["log"]["knn_every"])
                    due = knn_every and (self.epoch % knn_every == 0 or self.epoch == epochs)
                    if evaluator is not None and self.dist.is_main and due:
                        try:
                            logger.epoch(self.global_step, self.epoch, evaluator(self))
                        except Exception as e:  # noqa: BLE001 - report and keep training
                            self.log(f"warning: online evaluation at epoch {self.epoch} failed "
                                     f"({type(e).__name__}: {e}); training goes on (set log.knn_every=0 to turn "
                                     "it off)")
                    if status == "max_steps":
                        return status
        finally:
            logger.close()
            self.log = plain_log
        return status
