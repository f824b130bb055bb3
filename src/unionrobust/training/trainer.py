"""The training loop: strategy loss -> optimiser step, schedules, warm-up, checkpoints, evaluation.

One iteration (global step ``s`` of epoch ``e``, ``i`` within the epoch):

1. learning rate ``schedule(e + i / steps_per_epoch)`` (stepped per iteration) and attack scale
   ``strategy.set_scale(min(1, (s + 1) / (warmup_epochs * steps_per_epoch)))``, a linear ramp of
   the threats' radii and step sizes (without it adversarial training from scratch on the small
   embedded MNIST at eps = (0.3, 2, 10) stays at chance);
2. the global batch = slice ``i`` of the epoch's permutation (a function of seed and epoch), plus
   ``extra_fraction`` of the batch from the extra set (Croce & Hein App. A: one half), seeded
   crop/flip augmentation; under DDP each rank keeps its contiguous slice;
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
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.outdir import FolderLock
from unionrobust.threats import parse
from unionrobust.training import checkpoint as ckpt
from unionrobust.training.config import Config, dump_config
from unionrobust.training.data import (
    Source,
    augment,
    augment_params,
    epoch_order,
    generator,
    load_extra,
)
from unionrobust.training.distributed import (
    DistContext,
    all_sum,
    barrier,
    init_distributed,
    merge_metrics,
    shard,
    wrap_model,
)
from unionrobust.training.lifetime import deferred_signals, redeliver
from unionrobust.training.schedules import make_schedule

OPTIMIZERS = ("adam", "sgd")
SELECT = ("average", "clean", "union")
_RESUME_FREE = {"training.progress", "training.device", "eval.batch_size", "description"}


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history``: one dict per epoch (the JSONL log lines)."""

    model: nn.Module
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    out_dir: Path | None
    epochs: int
    steps: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    @property
    def time_per_epoch(self) -> float:
        times = [h["time"] for h in self.history if "time" in h]
        return sum(times) / len(times) if times else float("nan")


# ------------------------------------------------------------------------------- helpers


def load_split(data_cfg: Any, split: str) -> Any:
    """The ``split`` of the configured dataset (tensors or a dataset object)."""
    import unionrobust.data as D

    if hasattr(D, "get_dataset"):
        return D.get_dataset(data_cfg.dataset, split=split, root=data_cfg.root)
    if data_cfg.dataset == "mnist-embedded":
        from unionrobust.data.embedded import load_embedded_mnist

        return load_embedded_mnist(split)
    raise UnionRobustError(f"unknown dataset {data_cfg.dataset!r}")


def build_optimizer(cfg: Config, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    raise unknown_name("optimizer", o.name, OPTIMIZERS)


def build_strategy(cfg: Config):
    """``make_strategy(name, threats, **options)`` with option errors made one-line."""
    from unionrobust.training.strategies import make_strategy, strategy_names, strategy_options

    threats = parse(cfg.threats)
    options = cfg.strategy_options
    name = cfg.strategy_name
    if name in strategy_names() and "seed" in strategy_options(name):
        options.setdefault("seed", cfg.training.seed)
    try:
        return make_strategy(name, threats, **options)
    except TypeError as exc:
        raise UnionRobustError(
            f"strategy {cfg.strategy_name!r}: {str(exc).splitlines()[0]}"
        ) from None


def resolve_weights_path(path: str) -> str:
    """A weights file from a file path, a run folder or a checkpoint folder (best, then last)."""
    p = Path(path)
    if p.is_file():
        return str(p)
    if p.is_dir():
        for cand in ("best.safetensors", "last.safetensors", "model.safetensors"):
            if (p / cand).is_file():
                return str(p / cand)
        for folder in (p, p / "checkpoints"):
            for tag in ("best", "last"):
                if ckpt.has_checkpoint(folder, tag):
                    return str(folder / ckpt.read_pointer(folder, tag)["weights"])
    raise UnionRobustError(f"weights {path!r} not found (a file, run folder or checkpoint folder)")


def build_model_from(cfg: Config) -> nn.Module:
    from unionrobust.models import NormalizedModel, build_model, load_weights

    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.model.name, cfg.model.num_classes, **cfg.model.options)
    if cfg.model.weights:
        target = model.model if isinstance(model, NormalizedModel) else model
        load_weights(target, resolve_weights_path(cfg.model.weights), strict=True)
    return model


def _flat_stats(stats: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in stats.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().tolist()
        if isinstance(v, bool | int | float) or (
            isinstance(v, list) and all(isinstance(e, int | float) for e in v)
        ):
            out[k] = v
    return out


class _StatsMean:
    """Running mean over the steps of an epoch of numbers and same-length number lists."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.last: dict[str, Any] = {}

    def add(self, stats: dict[str, Any]) -> None:
        for k, v in _flat_stats(stats).items():
            self.last[k] = v
            if isinstance(v, list):
                prev = self.sums.get(k)
                if isinstance(prev, list) and len(prev) == len(v):
                    self.sums[k] = [a + float(b) for a, b in zip(prev, v, strict=True)]
                elif prev is None:
                    self.sums[k] = [float(b) for b in v]
                else:
                    continue
            else:
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, s in self.sums.items():
            c = self.counts[k]
            out[k] = [e / c for e in s] if isinstance(s, list) else s / c
        return out


def _diff_key(old: Any, new: Any, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = _diff_key(old.get(k), new.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    key = prefix.rstrip(".")
    return None if old == new or key in _RESUME_FREE else key


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``; a torn LAST line (a kill mid-write) is dropped,
    a bad line anywhere else is an error."""
    lines = path.read_text("utf-8", errors="replace").splitlines() if path.is_file() else []
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
                raise ValueError("not an epoch record")
        except ValueError:
            if all(not rest.strip() for rest in lines[i + 1 :]):
                break
            raise ckpt.CheckpointError(
                f"{str(path)!r}: line {i + 1} is corrupt; cannot resume"
            ) from None
        records.append(rec)
    return records


# ------------------------------------------------------------------------------- trainer


class Trainer:
    """Adversarial training run for one :class:`Config` (see module docstring).

    Python API extras: ``model``/``strategy`` objects replace the configured ones;
    ``train_data``/``eval_data``/``extra_data`` are ``(x, y)`` tensors or datasets (eval data
    replaces the held-out split); ``callbacks`` are objects with optional
    ``on_step_end(trainer, epoch, step_in_epoch, global_step)`` and
    ``on_epoch_end(trainer, record)``. With ``out_dir`` None nothing is written (no resume).
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

    def close(self) -> None:
        """Release the output folder (done by :meth:`fit`; idempotent)."""
        if self._lock is not None:
            self._lock.release()

    def _setup(
        self, model: Any, strategy: Any, train_data: Any, eval_data: Any, extra_data: Any
    ) -> None:
        config, resume, t = self.cfg, self.resume, self.cfg.training
        self.threats = parse(config.threats)
        self.strategy = strategy if strategy is not None else build_strategy(config)

        # ---- data
        train = Source(train_data if train_data is not None else load_split(config.data, "train"))
        n_eval = max(0, int(config.eval.n))
        if eval_data is not None:
            self.eval_source: Source | None = Source(eval_data)
        elif n_eval and config.eval.source == "test":
            self.eval_source = Source(load_split(config.data, "test"))
        else:
            self.eval_source = None
        if self.eval_source is None and n_eval:
            if n_eval >= len(train):
                raise UnionRobustError(f"eval.n = {n_eval} leaves no training examples")
            perm = torch.randperm(len(train), generator=generator("holdout", config.eval.seed))
            self.eval_source = train.subset(perm[:n_eval].sort().values)
            train = train.subset(perm[n_eval:].sort().values)
        if self.eval_source is not None and n_eval:
            self.eval_source = self.eval_source.subset(
                torch.arange(min(n_eval, len(self.eval_source)))
            )
        if config.data.train_n is not None:
            train = train.subset(torch.arange(min(config.data.train_n, len(train))))
        self.train_source = train
        self.extra_source: Source | None = None
        if extra_data is not None:
            self.extra_source = Source(extra_data)
        elif config.data.extra:
            self.extra_source = load_extra(config.data.extra)
        shape = train.sample_shape()
        aug = config.data.augment
        if aug == "auto":
            aug = "crop-flip" if shape[0] == 3 else "none"
        self.augment = aug

        # ---- batch geometry
        bsz = config.data.batch_size
        self.extra_bs = round(bsz * config.data.extra_fraction) if self.extra_source else 0
        self.main_bs = bsz - self.extra_bs
        if self.main_bs < 1:
            raise UnionRobustError("data.batch_size too small for data.extra_fraction")
        steps = math.ceil(len(train) / self.main_bs)
        if t.max_steps_per_epoch:
            steps = min(steps, t.max_steps_per_epoch)
        self.steps_per_epoch = steps

        # ---- model, optimiser, schedule, strategy
        self.model = (model if model is not None else build_model_from(config)).to(self.device)
        self.ddp_model = wrap_model(self.model, self.ctx, t.sync_bn)
        self.optimizer = build_optimizer(config, [p for p in self.model.parameters()])
        s = config.schedule
        self.schedule = make_schedule(
            s.name, lr=config.optimizer.lr, epochs=t.epochs, points=s.points,
            milestones=s.milestones, gamma=s.gamma, peak=s.peak, factor=s.factor,
        )  # fmt: skip
        self.amp = bool(t.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

        # ---- progress state
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._epoch_acc = {"loss": 0.0, "correct": 0.0, "n": 0.0, "time": 0.0}
        self._stats = _StatsMean()
        self.skipped = 0  # batches dropped for a non-finite loss (training.nonfinite = skip)
        self._stop: int | None = None  # a SIGINT/SIGTERM received during fit
        self.ckpt_dir = self.out_dir / "checkpoints" if self.out_dir else None
        if self.extra_source is not None and not self.extra_source.labelled:
            self._pseudo_label()
        if resume:
            self._load_resume()
        elif self.out_dir is not None and self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if ckpt.has_checkpoint(self.ckpt_dir, "last"):
                raise UnionRobustError(
                    f"{str(self.out_dir)!r} already holds a run; use --resume or a new --out"
                )
            with self._writing("config.yaml"):
                ckpt.atomic_write_text(self.out_dir / "config.yaml", dump_config(config))
                ckpt.atomic_write_text(self.out_dir / "log.jsonl", "")

    # --------------------------------------------------------------------- setup helpers

    def _pseudo_label(self) -> None:
        """Label the unlabelled extra set with the initial model (saved for resume)."""
        path = self.out_dir / "extra_labels.pt" if self.out_dir else None
        if path is not None and path.is_file():
            y = torch.load(path, map_location="cpu", weights_only=True)
        else:
            xs = self.extra_source
            ys = []
            was = self.model.training
            self.model.eval()
            with torch.no_grad():
                for chunk in torch.arange(len(xs)).split(500):
                    x, _ = xs.batch(chunk)
                    ys.append(self.model(x.to(self.device)).argmax(1).cpu())
            self.model.train(was)
            y = torch.cat(ys)
            if path is not None and self.ctx.is_main:
                with self._writing("extra_labels.pt"):
                    ckpt.atomic_write_bytes(path, ckpt.state_bytes(y))
        self.extra_source = self.extra_source.with_labels(y)

    def _state(self) -> dict[str, Any]:
        strat = self.strategy.state_dict() if hasattr(self.strategy, "state_dict") else {}
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "strategy": strat,
            "best": json.dumps(self.best),
            "skipped": self.skipped,
            "epoch_acc": dict(self._epoch_acc),
            "stats": json.dumps({"sums": self._stats.sums, "counts": self._stats.counts}),
            "config": json.dumps(self.cfg.to_dict()),
        }

    def save(self, tag: str = "last") -> None:
        """Write checkpoint ``tag`` (rank 0 only; the others wait)."""
        if self.ckpt_dir is not None and self.ctx.is_main:
            with self._writing(f"checkpoint {tag!r}"):
                ckpt.save_checkpoint(
                    self.ckpt_dir, tag, self.model.state_dict(), self._state(),
                    epoch=self.epoch, step=self.global_step,
                )  # fmt: skip
        barrier(self.ctx)

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write (full disk, permissions) into a one-line error; the writers are
        atomic, so the previous checkpoint and files stay intact."""
        try:
            yield
        except OSError as exc:
            raise UnionRobustError(
                f"cannot write {what} in {str(self.out_dir)!r}: {exc.strerror or exc}; free "
                "space (or fix permissions) and continue with --resume"
            ) from None

    def _load_resume(self) -> None:
        weights, state, _ = ckpt.load_checkpoint(self.ckpt_dir, "last")
        saved = json.loads(state["config"])
        diff = _diff_key(saved, self.cfg.to_dict())
        if diff:
            raise ckpt.CheckpointError(
                f"cannot resume {str(self.out_dir)!r}: config key {diff!r} differs from the "
                "saved run (see its config.yaml)"
            )
        try:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(
                f"checkpoint in {str(self.ckpt_dir)!r} does not fit the model: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        self.scaler.load_state_dict(state["scaler"])
        if hasattr(self.strategy, "load_state_dict") and state["strategy"]:
            self.strategy.load_state_dict(state["strategy"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best = json.loads(state["best"])
        self.skipped = int(state.get("skipped", 0))
        self._epoch_acc = {k: float(v) for k, v in state["epoch_acc"].items()}
        st = json.loads(state["stats"])
        self._stats.sums, self._stats.counts = st["sums"], st["counts"]
        ckpt.set_rng_state(state["rng"])
        # the log keeps only the epochs the checkpoint has seen
        log = self.out_dir / "log.jsonl"
        self.history = [r for r in read_train_log(log) if r["epoch"] < self.epoch]
        if self.ctx.is_main:
            with self._writing("log.jsonl"):
                ckpt.atomic_write_text(log, "".join(json.dumps(r) + "\n" for r in self.history))

    # --------------------------------------------------------------------- one step

    def _batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """This rank's ``(x, y, example_ids)`` of global batch ``i`` and the global batch size."""
        seed = self.cfg.training.seed
        order = self._order
        idx = order[i * self.main_bs : (i + 1) * self.main_bs]
        n_train = len(self.train_source)
        parts_idx = [idx]
        if self.extra_bs:
            n_extra = len(self.extra_source)
            eorder = epoch_order(seed, epoch, n_extra, "extra")
            pos = (torch.arange(self.extra_bs) + i * self.extra_bs) % n_extra
            parts_idx.append(eorder[pos] + n_train)
        gidx = torch.cat(parts_idx)
        n_global = int(gidx.numel())
        # a fixed shuffle of the global batch mixes standard/extra and picks the adversarial ones
        mix = torch.randperm(n_global, generator=generator(seed, "mix", epoch, i))
        gidx = gidx[mix]
        params = None
        if self.augment != "none":
            pad = self.cfg.data.crop_padding
            params = augment_params(n_global, generator(seed, "augment", epoch, i), pad)
        local = shard(torch.arange(n_global), self.ctx)
        lidx = gidx[local]
        xs, ys = [], []
        main = lidx < n_train
        order_back = torch.cat([torch.nonzero(main).flatten(), torch.nonzero(~main).flatten()])
        if bool(main.any()):
            x, y = self.train_source.batch(lidx[main])
            xs.append(x)
            ys.append(y)
        if bool((~main).any()):
            x, y = self.extra_source.batch(lidx[~main] - n_train)
            xs.append(x)
            ys.append(y)
        x = torch.cat(xs)
        y = torch.cat(ys)
        inv = torch.empty_like(order_back)
        inv[order_back] = torch.arange(order_back.numel())
        x, y = x[inv], y[inv]
        if params is not None:
            crop = self.augment in ("crop-flip", "crop")
            flip = self.augment in ("crop-flip", "flip")
            lp = tuple(p[local] for p in params)
            x = augment(x, lp, self.cfg.data.crop_padding, crop=crop, flip=flip)
        # ids = global example indices (extra set after the standard one): the strategies key
        # their per-example randomness by them (and by a per-batch counter of their own)
        return x, y, lidx, n_global

    def _train_step(self, epoch: int, i: int) -> None:
        t = self.cfg.training
        spe = self.steps_per_epoch
        lr = float(self.schedule(epoch + i / spe))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = lr
        if t.warmup_epochs > 0 and hasattr(self.strategy, "set_scale"):
            self.strategy.set_scale(min(1.0, (self.global_step + 1) / (t.warmup_epochs * spe)))
        elif hasattr(self.strategy, "set_scale"):
            self.strategy.set_scale(1.0)
        x, y, ids, n_global = self._batch(epoch, i)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        n_adv_global = round(t.adv_fraction * n_global)
        adv = shard(torch.arange(n_global), self.ctx) < n_adv_global
        adv_dev = adv.to(self.device)
        self.ddp_model.train()
        total = x.new_zeros(())
        correct = 0.0
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=self.amp)
        n_adv = int(adv.sum())
        with autocast:
            if n_adv:
                out = self.strategy(self.ddp_model, x[adv_dev], y[adv_dev], example_ids=ids[adv])
                total = total + out.loss.float() * n_adv
                if out.logits is not None:
                    correct += float((out.logits.argmax(1) == y[adv_dev]).sum())
                self._stats.add(out.stats or {})
            if n_adv < x.shape[0]:
                logits = self.ddp_model(x[~adv_dev])
                total = total + F.cross_entropy(logits.float(), y[~adv_dev], reduction="sum")
                correct += float((logits.argmax(1) == y[~adv_dev]).sum())
        # global-batch mean under DDP's gradient average over ranks
        loss = total * (self.ctx.world / n_global)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if not self._finite_step(total, epoch, lr):
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()
        acc = self._epoch_acc
        acc["loss"] += float(total.detach())
        acc["correct"] += correct
        acc["n"] += float(x.shape[0])

    def _finite_step(self, total: torch.Tensor, epoch: int, lr: float) -> bool:
        """False (batch dropped) or an error when the loss or a gradient is not finite.

        Checked after ``backward`` so that under DDP every rank sees the same averaged
        gradients (and the flag is summed over ranks): all ranks skip or stop together.
        """
        bad = ~torch.isfinite(total.detach())
        if not self.amp:  # under AMP the GradScaler already skips inf/NaN gradients
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                bad = bad | ~torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if self.ctx.distributed:
            bad = all_sum(bad.double().reshape(1), self.ctx)[0] > 0
        if not bool(bad):
            return True
        t = self.cfg.training
        if t.nonfinite == "error":
            raise UnionRobustError(
                f"training diverged in epoch {epoch} at step {self.global_step + 1}: the loss or "
                f"its gradient is not finite (lr {lr:g}); lower optimizer.lr, or set "
                "training.nonfinite=skip to drop such batches"
            )
        self.skipped += 1
        if self.skipped > t.max_skipped:
            raise UnionRobustError(
                f"training diverged: {self.skipped} batches with a non-finite loss skipped "
                f"(more than training.max_skipped = {t.max_skipped}); lower optimizer.lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        return False

    def _check_finite_weights(self, epoch: int) -> None:
        """A model with non-finite weights is never evaluated, saved or selected as best."""
        values = [v for v in self.model.state_dict().values() if v.is_floating_point()]
        if values and not bool(torch.stack([torch.isfinite(v).all() for v in values]).all()):
            raise UnionRobustError(
                f"training diverged in epoch {epoch}: the weights are not finite (the last "
                "finite checkpoint is kept); lower optimizer.lr"
            )

    # --------------------------------------------------------------------- evaluation

    def evaluate_now(self) -> dict[str, float]:
        """Quick robust evaluation of the held-out points, sharded by example under DDP."""
        from unionrobust.evaluation import evaluate

        e = self.cfg.eval
        src = self.eval_source
        if src is None or len(src) == 0:
            return {}
        local = shard(torch.arange(len(src)), self.ctx)
        x, y = src.batch(local)
        report = evaluate(
            self.model, x, y, threats=self.threats, suite=e.suite, batch_size=e.batch_size,
            seed=e.seed, device=self.device, progress=False, example_ids=local,
        )  # fmt: skip
        d = report.to_dict()
        flat = {
            "clean": float(d["clean_accuracy"]),
            "union": float(d["union_accuracy"]),
            "average": float(d["average_accuracy"]),
        }
        for spec, v in d["per_threat"].items():
            flat[f"threat:{spec}"] = float(v["accuracy"] if isinstance(v, dict) else v)
        return merge_metrics(flat, int(local.numel()), self.ctx)

    # --------------------------------------------------------------------- main loop

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None or not self.ctx.is_main:
            return
        log = self.out_dir / "log.jsonl"
        with self._writing("log.jsonl"), open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _end_epoch(self, epoch: int) -> dict[str, Any]:
        e = self.cfg.eval
        self._check_finite_weights(epoch)
        sums = all_sum(
            torch.tensor(
                [self._epoch_acc[k] for k in ("loss", "correct", "n")], dtype=torch.float64
            ),
            self.ctx,
        )
        n = max(float(sums[2]), 1.0)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": self.global_step,
            "lr": self._last_lr,
            "train_loss": float(sums[0]) / n,
            "train_acc": float(sums[1]) / n,
            "time": self._epoch_acc["time"],
        }
        last = epoch + 1 == self.cfg.training.epochs
        if e.n and ((epoch + 1) % max(1, e.every) == 0 or last):
            t0 = time.perf_counter()
            metrics = self.evaluate_now()
            record["eval_time"] = time.perf_counter() - t0
            record.update({f"{k}_acc" if ":" not in k else k: v for k, v in metrics.items()})
            score = metrics.get(e.select)
            if score is not None and (self.best is None or score > self.best["score"]):
                self.best = {"epoch": epoch, "score": score, "metric": e.select}
                record["best"] = True
        if self.skipped:
            record["skipped_batches"] = self.skipped
        record["strategy_stats"] = self._stats.result()
        return record

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
            from tqdm.auto import tqdm

            bar = tqdm(
                total=t.epochs * self.steps_per_epoch, initial=self.global_step,
                desc=f"train {self.cfg.strategy_name}", unit="step", leave=False,
            )  # fmt: skip
        self._last_lr = float(self.schedule(self.epoch))
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
        t = self.cfg.training
        epoch = self.epoch
        self._order = epoch_order(t.seed, epoch, len(self.train_source))
        if self.step_in_epoch == 0:
            self._epoch_acc = {"loss": 0.0, "correct": 0.0, "n": 0.0, "time": 0.0}
            self._stats = _StatsMean()
            if hasattr(self.strategy, "on_epoch_start"):
                self.strategy.on_epoch_start(epoch)
        for i in range(self.step_in_epoch, self.steps_per_epoch):
            t0 = time.perf_counter()
            self._train_step(epoch, i)
            self._epoch_acc["time"] += time.perf_counter() - t0
            self.global_step += 1
            self.step_in_epoch = i + 1
            if bar is not None:
                acc = self._epoch_acc
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch, loss=f"{acc['loss'] / max(acc['n'], 1):.3f}",
                    acc=f"{acc['correct'] / max(acc['n'], 1):.3f}",
                )  # fmt: skip
            every = t.checkpoint_every
            mid = i + 1 < self.steps_per_epoch
            if every and self.global_step % every == 0 and mid:
                self.save("last")
            for cb in self.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(self, epoch, i, self.global_step)
            if self._stop is not None and mid:
                self.save("last")
                return
        record = self._end_epoch(epoch)
        self.history.append(record)
        self._log(record)
        self.epoch = epoch + 1
        self.step_in_epoch = 0
        if record.get("best"):
            self._save_best()
        self.save("last")
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(self, record)

    def _save_best(self) -> None:
        if self.out_dir is None:
            return
        if self.ctx.is_main:
            from unionrobust.models import save_weights

            with self._writing("best.safetensors"):
                save_weights(self.model.state_dict(), self.out_dir / "best.safetensors")
        self.save("best")

    def _finish(self) -> dict[str, str]:
        if self.out_dir is None:
            return {}
        files = {
            "last": str(self.out_dir / "last.safetensors"),
            "log": str(self.out_dir / "log.jsonl"),
            "config": str(self.out_dir / "config.yaml"),
            "result": str(self.out_dir / "result.json"),
        }
        if (self.out_dir / "best.safetensors").is_file() or self.best is not None:
            files["best"] = str(self.out_dir / "best.safetensors")
        if self.ctx.is_main:
            from unionrobust.models import save_weights

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


def train(config: Config, out_dir: str | os.PathLike | None = None, **kwargs: Any) -> TrainResult:
    """Run :class:`Trainer` on ``config`` (see its docstring for the keyword arguments)."""
    return Trainer(config, out_dir, **kwargs).fit()
