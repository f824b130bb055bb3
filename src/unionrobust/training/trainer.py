"""The training loop: strategy loss -> optimiser step, schedules, warm-up, checkpoints, evaluation.

(~410 lines: the loop only; its parts live in build, batches, runstate, holdout, finite, lifetime.)

One iteration (global step ``s`` of epoch ``e``, ``i`` within the epoch):

1. learning rate ``schedule(e + i / steps_per_epoch)`` (stepped per iteration) and attack scale
   ``strategy.set_scale(min(1, (s + 1) / (warmup_epochs * steps_per_epoch)))``, a linear ramp of
   the threats' radii and step sizes (without it adversarial training from scratch on the small
   embedded MNIST at eps = (0.3, 2, 10) stays at chance);
2. global batch ``i`` of the epoch from :class:`~unionrobust.training.batches.TrainingData`
   (seeded order, extra set, augmentation; this rank's slice under DDP);
3. the first ``round(adv_fraction * B)`` examples of the (shuffled) batch get the strategy's
   adversarial loss, the rest the clean cross-entropy; the loss is the mean over the batch.
   Wang et al. App. C.2 "adversarial examples are crafted for assisting the training with a
   ratio of 0.5" is read as ``adv_fraction = 0.5`` (half of each batch adversarial);
4. backward (GradScaler on CUDA with AMP), optimiser step.

Each epoch ends with a quick robust evaluation on held-out points (sharded under DDP), a JSONL
log line, best-checkpoint selection on union accuracy (the papers early-stop) and an atomic
``last`` checkpoint; ``checkpoint_every`` adds mid-epoch checkpoints, from which ``resume``
continues bit-exactly on the CPU (the consumed batches of the epoch are skipped).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from unionrobust.atomic import append_line
from unionrobust.errors import UnionRobustError
from unionrobust.models import save_weights
from unionrobust.outdir import FolderLock, writing
from unionrobust.threats import parse
from unionrobust.training import checkpoint as ckpt
from unionrobust.training.batches import TrainingData
from unionrobust.training.build import build_model_from, build_optimizer, build_strategy
from unionrobust.training.config import Config, dump_config
from unionrobust.training.distributed import (
    DistContext,
    all_sum,
    barrier,
    init_distributed,
    shard,
    wrap_model,
)
from unionrobust.training.finite import check_finite_weights, on_nonfinite, step_is_finite
from unionrobust.training.holdout import holdout_metrics
from unionrobust.training.lifetime import deferred_signals, redeliver
from unionrobust.training.runstate import RunState, TrainResult
from unionrobust.training.schedules import make_schedule
from unionrobust.training.tblog import open_writer, write_record

#: how to go on after a failed write: the last checkpoint is intact
AFTER_WRITE_ERROR = "free space (or fix permissions) and continue with --resume"


def can_resume(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds a run that ``resume=True`` can continue."""
    return ckpt.has_checkpoint(Path(out_dir) / "checkpoints", "last")


class Trainer:
    """Adversarial training run for one :class:`Config` (see module docstring): the loop.

    The data and its batches are a :class:`TrainingData`, the progress a :class:`RunState`
    that saves and restores itself. Python API extras: ``model``/``strategy`` objects replace
    the configured ones (a strategy is a :class:`~unionrobust.training.strategies.Strategy` or
    provides its ``__call__``, ``set_scale``, ``on_epoch_start``, ``state_dict`` and
    ``load_state_dict``); ``train_data``/``eval_data``/``extra_data`` are ``(x, y)`` tensors or
    datasets (eval data replaces the held-out split); ``callbacks`` are objects with optional
    ``on_step_end(trainer, epoch, step_in_epoch, global_step)`` and
    ``on_epoch_end(trainer, record)``. With ``out_dir`` None nothing is written (no resume);
    otherwise the run holds the folder's lock (``outdir.py``) until :meth:`fit` ends.
    """

    def __init__(
        self,
        config: Config,
        out_dir: str | os.PathLike | None = None,
        *,
        resume: bool = False,
        model: nn.Module | None = None,
        strategy: Any = None,
        train_data: Any = None,
        eval_data: Any = None,
        extra_data: Any = None,
        callbacks: Sequence[Any] = (),
        ctx: DistContext | None = None,
    ) -> None:
        self.cfg = config.validate()  # a Python caller may have changed it after loading
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.callbacks = list(callbacks)
        if resume and self.out_dir is None:
            raise UnionRobustError("resume needs an output folder")
        self.ctx = ctx if ctx is not None else init_distributed(config.training.device)
        self.device = self.ctx.device
        # one run owns the output folder (checked and locked before any work)
        self._lock = FolderLock(self.out_dir) if self.out_dir and self.ctx.is_main else None
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._setup(model, strategy, train_data, eval_data, extra_data)
        except BaseException:
            self.close()
            raise

    def _setup(
        self, model: Any, strategy: Any, train_data: Any, eval_data: Any, extra_data: Any
    ) -> None:
        cfg, t = self.cfg, self.cfg.training
        self.threats = parse(cfg.threats)
        self.strategy = strategy if strategy is not None else build_strategy(cfg)
        self.data = TrainingData(cfg, train_data, eval_data, extra_data)
        self.steps_per_epoch = self.data.steps_per_epoch
        self.model = (model if model is not None else build_model_from(cfg)).to(self.device)
        self.ddp_model = wrap_model(self.model, self.ctx, t.sync_bn)
        self.optimizer = build_optimizer(cfg, list(self.model.parameters()))
        s = cfg.schedule
        self.schedule = make_schedule(
            s.name, lr=cfg.optimizer.lr, epochs=t.epochs, points=s.points,
            milestones=s.milestones, gamma=s.gamma, peak=s.peak, factor=s.factor,
        )  # fmt: skip
        self.amp = bool(t.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = RunState()
        self._stop: int | None = None  # a SIGINT/SIGTERM received during fit
        self._tb: Any = None  # TensorBoard writer during fit (tblog.py)
        self.ckpt_dir = self.out_dir / "checkpoints" if self.out_dir else None
        if self.data.needs_labels:
            self._pseudo_label()
        if self.resume:
            self.state = RunState.restore(
                self.out_dir, self.model, self.optimizer, self.scaler, self.strategy, cfg
            )
            if self.ctx.is_main:  # the log keeps only the epochs the checkpoint has seen
                text = "".join(json.dumps(r) + "\n" for r in self.state.history)
                with self._writing("log.jsonl"):
                    ckpt.atomic_write_text(self.out_dir / "log.jsonl", text)
        elif self.out_dir is not None and self.ctx.is_main:
            if can_resume(self.out_dir):
                raise UnionRobustError(
                    f"{str(self.out_dir)!r} already holds a run; use --resume or a new --out"
                )
            with self._writing("config.yaml"):
                ckpt.atomic_write_text(self.out_dir / "config.yaml", dump_config(cfg))
                ckpt.atomic_write_text(self.out_dir / "log.jsonl", "")

    def close(self) -> None:
        """Release the output folder (done by :meth:`fit`; idempotent)."""
        if self._lock is not None:
            self._lock.release()

    # progress, as attributes of the trainer (callbacks read them)
    epoch = property(lambda self: self.state.epoch)
    global_step = property(lambda self: self.state.global_step)
    best = property(lambda self: self.state.best)
    history = property(lambda self: self.state.history)

    # --------------------------------------------------------------------- files

    def _writing(self, what: str) -> contextlib.AbstractContextManager[None]:
        """A failed write of ``what`` (full disk, permissions) as a one-line error; the writers
        are atomic, so the previous checkpoint and files stay intact."""
        return writing(self.out_dir, AFTER_WRITE_ERROR, what)

    def _pseudo_label(self) -> None:
        """Label the unlabelled extra set with the initial model (saved for resume)."""
        path = self.out_dir / "extra_labels.pt" if self.out_dir else None
        if path is not None and path.is_file():
            y = torch.load(path, map_location="cpu", weights_only=True)
        else:
            y = self.data.predict_extra(self.model, self.device)
            if path is not None and self.ctx.is_main:
                with self._writing("extra_labels.pt"):
                    ckpt.atomic_write_bytes(path, ckpt.state_bytes(y))
        self.data.label_extra(y)

    def save(self, tag: str = "last") -> None:
        """Write checkpoint ``tag`` (rank 0 only; the others wait)."""
        if self.ckpt_dir is not None and self.ctx.is_main:
            with self._writing(f"checkpoint {tag!r}"):
                self.state.save(
                    self.ckpt_dir, tag, self.model, self.optimizer, self.scaler, self.strategy,
                    self.cfg,
                )  # fmt: skip
        barrier(self.ctx)

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None or not self.ctx.is_main:
            return
        if self._tb is not None:
            write_record(self._tb, record)
        with self._writing("log.jsonl"):
            append_line(self.out_dir / "log.jsonl", json.dumps(record))

    def _save_best(self) -> None:
        if self.out_dir is None:
            return
        if self.ctx.is_main:
            with self._writing("best.safetensors"):
                save_weights(self.model.state_dict(), self.out_dir / "best.safetensors")
        self.save("best")

    def _finish(self) -> dict[str, str]:
        if self.out_dir is None:
            return {}
        names = {"last": "last.safetensors", "log": "log.jsonl", "config": "config.yaml"}
        files = {k: str(self.out_dir / v) for k, v in {**names, "result": "result.json"}.items()}
        if (self.out_dir / "best.safetensors").is_file() or self.best is not None:
            files["best"] = str(self.out_dir / "best.safetensors")
        if self.ctx.is_main:
            summary = {
                "strategy": self.cfg.strategy_name,
                "epochs": self.epoch,
                "steps": self.global_step,
                "best": self.best,
                "final": self.history[-1] if self.history else None,
                "files": files,
            }
            with self._writing("last.safetensors and result.json"):
                save_weights(self.model.state_dict(), self.out_dir / "last.safetensors")
                ckpt.atomic_write_text(self.out_dir / "result.json", json.dumps(summary, indent=1))
        barrier(self.ctx)
        return files

    # --------------------------------------------------------------------- one step

    def _train_step(self, epoch: int, i: int) -> None:
        t, run = self.cfg.training, self.state
        spe = self.steps_per_epoch
        lr = float(self.schedule(epoch + i / spe))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = lr
        ramp = (run.global_step + 1) / (t.warmup_epochs * spe) if t.warmup_epochs > 0 else 1.0
        self.strategy.set_scale(min(1.0, ramp))
        x, y, ids, n_global = self.data.batch(epoch, i, self.ctx)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        adv = shard(torch.arange(n_global), self.ctx) < round(t.adv_fraction * n_global)
        adv_dev = adv.to(self.device)
        self.ddp_model.train()
        total = x.new_zeros(())
        correct = 0.0
        n_adv = int(adv.sum())
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            if n_adv:
                out = self.strategy(self.ddp_model, x[adv_dev], y[adv_dev], example_ids=ids[adv])
                total = total + out.loss.float() * n_adv
                if out.logits is not None:
                    correct += float((out.logits.argmax(1) == y[adv_dev]).sum())
                run.stats.add(out.stats or {})
            if n_adv < x.shape[0]:
                logits = self.ddp_model(x[~adv_dev])
                total = total + F.cross_entropy(logits.float(), y[~adv_dev], reduction="sum")
                correct += float((logits.argmax(1) == y[~adv_dev]).sum())
        # global-batch mean under DDP's gradient average over ranks
        loss = total * (self.ctx.world / n_global)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # under AMP the GradScaler itself skips steps with inf/NaN gradients
        if not step_is_finite(total, self.model, self.ctx, check_grads=not self.amp):
            run.skipped = on_nonfinite(t, run.skipped, epoch, run.global_step + 1, lr)
            self.optimizer.zero_grad(set_to_none=True)
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()
        run.sums["loss"] += float(total.detach())
        run.sums["correct"] += correct
        run.sums["n"] += float(x.shape[0])

    # --------------------------------------------------------------------- evaluation

    def evaluate_now(self) -> dict[str, float]:
        """Quick robust evaluation of the held-out points, sharded by example under DDP."""
        return holdout_metrics(self.model, self.data.eval, self.threats, self.cfg.eval, self.ctx)

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        e, run = self.cfg.eval, self.state
        check_finite_weights(self.model, epoch)  # never evaluated, saved or best
        keys = ("loss", "correct", "n")
        sums = all_sum(torch.tensor([run.sums[k] for k in keys], dtype=torch.float64), self.ctx)
        n = max(float(sums[2]), 1.0)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": run.global_step,
            "lr": self._last_lr,
            "train_loss": float(sums[0]) / n,
            "train_acc": float(sums[1]) / n,
            "time": run.sums["time"],
        }
        last = epoch + 1 == self.cfg.training.epochs
        if e.n and ((epoch + 1) % max(1, e.every) == 0 or last):
            t0 = time.perf_counter()
            metrics = self.evaluate_now()
            record["eval_time"] = time.perf_counter() - t0
            record.update({f"{k}_acc" if ":" not in k else k: v for k, v in metrics.items()})
            score = metrics.get(e.select)
            if score is not None and (run.best is None or score > run.best["score"]):
                run.best = {"epoch": epoch, "score": score, "metric": e.select}
                record["best"] = True
        if run.skipped:
            record["skipped_batches"] = run.skipped
        record["strategy_stats"] = run.stats.result()
        return record

    # --------------------------------------------------------------------- main loop
    def fit(self) -> TrainResult:
        """Train to ``training.epochs`` (continuing from the checkpoint when resuming).

        SIGINT/SIGTERM during the loop (single process, main thread, with an output folder)
        finish the current step, save the ``last`` checkpoint and then act as usual
        (KeyboardInterrupt / termination): ``--resume`` continues exactly from there.
        """
        t = self.cfg.training
        start = time.perf_counter()
        bar = None
        if t.progress and self.ctx.is_main:
            bar = tqdm(
                total=t.epochs * self.steps_per_epoch, initial=self.global_step,
                desc=f"train {self.cfg.strategy_name}", unit="step", leave=False,
            )  # fmt: skip
        self._last_lr = float(self.schedule(self.epoch))
        write_tb = self.out_dir is not None and self.ctx.is_main and t.tensorboard
        self._tb = open_writer(self.out_dir / "tensorboard") if write_tb else None
        try:
            with self._signals():
                while self.epoch < t.epochs and self._stop is None:
                    self._run_epoch(bar)
            if self._stop is not None:
                redeliver(self._stop)
            files = self._finish()
        finally:
            if bar is not None:
                bar.close()
            if self._tb is not None:
                self._tb.close()
            self.close()
        return TrainResult(
            model=self.model, history=self.history, best=self.best, out_dir=self.out_dir,
            epochs=self.epoch, steps=self.global_step, seconds=time.perf_counter() - start,
            files=files,
        )  # fmt: skip

    def _signals(self) -> contextlib.AbstractContextManager:
        """Record SIGINT/SIGTERM in ``self._stop`` while training (see :meth:`fit`)."""
        if self.out_dir is None or self.ctx.distributed:
            return contextlib.nullcontext()
        return deferred_signals(lambda signum: setattr(self, "_stop", signum))

    def _run_epoch(self, bar: Any) -> None:
        """The remaining steps of epoch ``self.epoch``, then its evaluation, log and checkpoint."""
        run, every = self.state, self.cfg.training.checkpoint_every
        epoch = run.epoch
        if run.step_in_epoch == 0:
            run.start_epoch()
            self.strategy.on_epoch_start(epoch)
        for i in range(run.step_in_epoch, self.steps_per_epoch):
            t0 = time.perf_counter()
            self._train_step(epoch, i)
            run.sums["time"] += time.perf_counter() - t0
            run.global_step += 1
            run.step_in_epoch = i + 1
            if bar is not None:
                n = max(run.sums["n"], 1)
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch, loss=f"{run.sums['loss'] / n:.3f}",
                    acc=f"{run.sums['correct'] / n:.3f}",
                )  # fmt: skip
            mid = i + 1 < self.steps_per_epoch
            if every and run.global_step % every == 0 and mid:
                self.save("last")
            for cb in self.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(self, epoch, i, run.global_step)
            if self._stop is not None and mid:
                self.save("last")
                return
        record = self._end_epoch(epoch)
        run.history.append(record)
        self._log(record)
        run.epoch, run.step_in_epoch = epoch + 1, 0
        if record.get("best"):
            self._save_best()
        self.save("last")
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(self, record)


def train(config: Config, out_dir: str | os.PathLike | None = None, **kwargs: Any) -> TrainResult:
    """Run :class:`Trainer` on ``config`` (see its docstring for the keyword arguments)."""
    return Trainer(config, out_dir, **kwargs).fit()
