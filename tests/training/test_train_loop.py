"""The trainer: lr per iteration, eps warm-up, clean/adversarial mix, extra set, augmentation,
per-epoch evaluation + best checkpoint, in-process resume."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import unionrobust.training.holdout as holdout
from _helpers import tiny_data
from _helpers import tiny_mlp as tiny_model
from unionrobust.errors import UnionRobustError
from unionrobust.training.config import config_from_dict
from unionrobust.training.data import augment, augment_params, generator
from unionrobust.training.schedules import make_schedule
from unionrobust.training.strategies import StrategyOutput, make_strategy
from unionrobust.training.trainer import Trainer, train


def tiny_config(**sections):
    base = {
        "threats": "linf:0.1, l2:0.5, l1:2",
        "data": {"batch_size": 8},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "schedule": {"name": "constant"},
        "training": {"epochs": 2, "progress": False, "seed": 1},
        "eval": {"n": 0},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return config_from_dict(base)


class Recorder:
    """A minimal strategy (natural loss) that records what the trainer gives it."""

    name = "recorder"

    def __init__(self) -> None:
        self.scales: list[float] = []
        self.sizes: list[int] = []
        self.ids: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self.epochs: list[int] = []
        self.scale = 1.0

    def set_scale(self, s: float) -> None:
        self.scale = s

    def on_epoch_start(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass

    def __call__(self, model, x, y, example_ids=None):
        self.scales.append(self.scale)
        self.sizes.append(x.shape[0])
        self.ids.append(example_ids.clone())
        self.ys.append(y.clone())
        logits = model(x)
        return StrategyOutput(F.cross_entropy(logits, y), logits, {"scale": self.scale})


def test_warmup_ramps_scale_and_lr_follows_schedule_per_iteration():
    rec = Recorder()
    lrs = []

    class LrProbe:
        def on_step_end(self, trainer, epoch, i, step):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    cfg = tiny_config(
        training={"warmup_epochs": 1, "epochs": 2},
        schedule={"name": "piecewise", "points": [[0, 0.0], [1, 0.1], [2, 0.0]]},
    )
    train(
        cfg, None, model=tiny_model(), strategy=rec, train_data=tiny_data(), callbacks=[LrProbe()]
    )
    assert rec.scales == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    sched = make_schedule("piecewise", lr=0.1, epochs=2, points=[[0, 0.0], [1, 0.1], [2, 0.0]])
    assert lrs == pytest.approx([sched(e + i / 5) for e in range(2) for i in range(5)])
    assert rec.epochs == [0, 1]
    # every example once per epoch, in an order that changes with the epoch
    ep0, ep1 = torch.cat(rec.ids[:5]), torch.cat(rec.ids[5:])
    assert sorted(ep0.tolist()) == list(range(40)) == sorted(ep1.tolist())
    assert not torch.equal(ep0, ep1)


def test_adv_fraction_gives_the_strategy_part_of_each_batch():
    rec = Recorder()
    cfg = tiny_config(training={"adv_fraction": 0.25, "epochs": 1})
    result = train(cfg, None, model=tiny_model(), strategy=rec, train_data=tiny_data())
    assert rec.sizes == [2] * 5  # round(0.25 * 8) adversarial, 6 clean
    assert result.history[0]["train_loss"] > 0
    with pytest.raises(UnionRobustError, match="adv_fraction"):
        Trainer(
            tiny_config(training={"adv_fraction": 1.5}),
            model=tiny_model(),
            strategy=rec,
            train_data=tiny_data(),
        )


def test_unlabelled_extra_set_is_pseudo_labelled_and_fills_half_of_each_batch():
    rec = Recorder()
    model = tiny_model()
    xe, _ = tiny_data(16, seed=5)
    with torch.no_grad():
        pseudo = model(xe).argmax(1)
    cfg = tiny_config(training={"epochs": 1}, data={"extra_fraction": 0.5})
    train(cfg, None, model=model, strategy=rec, train_data=tiny_data(), extra_data=(xe, None))
    assert rec.sizes == [8] * 10  # an epoch = one pass over the 40 standard examples, 4 per batch
    for ids, ys in zip(rec.ids, rec.ys, strict=True):
        extra = ids >= 40
        assert int(extra.sum()) == 4
        assert torch.equal(ys[extra], pseudo[ids[extra] - 40])


def test_augmentation_is_seeded_correct_and_shard_consistent():
    x = torch.rand(6, 3, 8, 8)
    p = augment_params(6, generator(0, "a"), padding=2)
    q = augment_params(6, generator(0, "a"), padding=2)
    assert all(torch.equal(a, b) for a, b in zip(p, q, strict=True))
    out = augment(x, p, padding=2)
    assert out.shape == x.shape
    half = augment(x[3:], tuple(t[3:] for t in p), padding=2)
    assert torch.equal(out[3:], half)
    # offsets (2, 2) without flip are the identity; (0, 0) shifts the image by 2 pixels
    ident = (torch.tensor([2]), torch.tensor([2]), torch.tensor([False]))
    assert torch.equal(augment(x[:1], ident, padding=2), x[:1])
    shift = (torch.tensor([0]), torch.tensor([0]), torch.tensor([True]))
    moved = augment(x[:1], shift, padding=2).flip(-1)
    assert torch.equal(moved[..., 2:, 2:], x[:1, :, :-2, :-2])
    assert float(moved[..., :2, :].abs().sum()) == 0.0


def test_log_best_checkpoint_and_outputs(tmp_path):
    cfg = tiny_config(
        strategy={"name": "pinf", "steps": 2},
        training={"epochs": 2},
        eval={"n": 12, "suite": "quick", "batch_size": 12},
    )
    result = train(cfg, tmp_path, model=tiny_model(), train_data=tiny_data(52))
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    keys = {"lr", "train_loss", "train_acc", "clean_acc", "union_acc", "average_acc", "time"}
    assert keys <= set(lines[0])
    assert {"threat:linf:0.1", "threat:l2:0.5", "threat:l1:2"} <= set(lines[0])
    assert "attack_success" in lines[0]["strategy_stats"]
    for r in lines:
        per = [r[k] for k in r if k.startswith("threat:")]
        assert r["union_acc"] <= min(per) + 1e-9 and max(per) <= r["clean_acc"] + 1e-9
    assert result.steps == 10  # 52 - 12 held out = 40 examples, batch 8
    best = max(lines, key=lambda r: r["union_acc"])
    assert result.best["epoch"] == min(
        r["epoch"] for r in lines if r["union_acc"] == best["union_acc"]
    )
    for name in ("best.safetensors", "last.safetensors", "config.yaml", "result.json"):
        assert (tmp_path / name).is_file()
    with pytest.raises(UnionRobustError, match="already holds a run"):
        Trainer(cfg, tmp_path, model=tiny_model(), train_data=tiny_data(52))


def test_holdout_union_only_keeps_the_chosen_checkpoint(tmp_path, monkeypatch):
    """A non-quick held-out suite runs union-only: same union accuracies every epoch, so the
    same best checkpoint, as the per-threat cascade."""
    cfg = tiny_config(
        strategy={"name": "pinf", "steps": 2},
        training={"epochs": 3},
        eval={"n": 16, "suite": "pgd, fgsm", "batch_size": 16},
    )
    assert holdout.holdout_union_only(cfg.eval)
    assert not holdout.holdout_union_only(tiny_config(eval={"suite": "quick"}).eval)
    assert not holdout.holdout_union_only(
        tiny_config(eval={"suite": "standard", "select": "clean"}).eval
    )
    modes, runs = [], {}
    real_evaluate = holdout.evaluate

    def spy(*args, **kwargs):
        modes.append(kwargs["mode"] is holdout.EvaluationMode.UNION_ONLY)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(holdout, "evaluate", spy)
    for union_only in (True, False):
        monkeypatch.setattr(holdout, "holdout_union_only", lambda e, u=union_only: u)
        out = tmp_path / str(union_only)
        result = train(cfg, out, model=tiny_model(), train_data=tiny_data(60))
        log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
        held_out = json.loads((out / "result.json").read_text())["held_out"]  # a user's suite:
        assert held_out["upper_bounds"] == ["per-threat", "union", "average"]  # all bounds
        assert held_out["mode"] == ("union-only" if union_only else "per-threat")
        runs[union_only] = (
            result.best,
            [r["union_acc"] for r in log],
            [r["clean_acc"] for r in log],
        )
    assert modes == [True] * 3 + [False] * 3
    assert runs[True] == runs[False]
    assert len(runs[True][1]) == 3


def test_resume_mid_epoch_in_process_is_bit_exact(tmp_path):
    """Stop after step 3 of 5 (checkpoint at step 2), resume: same weights as one run."""
    cfg = tiny_config(strategy={"name": "pinf", "steps": 2}, training={"checkpoint_every": 2})
    full = train(cfg, None, model=tiny_model(dropout=0.2), train_data=tiny_data())

    class Stop(Exception):
        pass

    class StopAt:
        def on_step_end(self, trainer, epoch, i, step):
            if step == 3:
                raise Stop

    with pytest.raises(Stop):
        train(
            cfg,
            tmp_path,
            model=tiny_model(dropout=0.2),
            train_data=tiny_data(),
            callbacks=[StopAt()],
        )
    torch.manual_seed(1234)  # resume must not depend on the global RNG of the new process
    resumed = train(
        cfg, tmp_path, resume=True, model=tiny_model(seed=7, dropout=0.2), train_data=tiny_data()
    )
    assert resumed.steps == full.steps == 10
    for a, b in zip(
        full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = tiny_config(training={"epochs": 1})
    train(cfg, tmp_path, model=tiny_model(), strategy=Recorder(), train_data=tiny_data())
    changed = tiny_config(training={"epochs": 1}, optimizer={"lr": 0.5})
    with pytest.raises(UnionRobustError, match=r"'optimizer.lr' differs"):
        Trainer(
            changed,
            tmp_path,
            resume=True,
            model=tiny_model(),
            strategy=Recorder(),
            train_data=tiny_data(),
        )


def test_training_reduces_the_loss_with_a_real_strategy():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0.5).long()  # a learnable rule
    strategy = make_strategy("natural", "linf:0.1")
    cfg = tiny_config(training={"epochs": 4}, optimizer={"name": "adam", "lr": 0.01})
    result = train(cfg, None, model=tiny_model(), strategy=strategy, train_data=(x, y))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
