"""Issue 18, deliverable 7: the fault matrix. Each case: a silent wrong result becomes a one-line
UnionRobustError or a correct figure; no traceback; no unbounded run without a warning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import unionrobust as ur
from _helpers import Scaled, tiny_data, tiny_mlp
from unionrobust.attacks import (
    APGD,
    MSD,
    PGD,
    AffineLp,
    AffineSpatial,
    DomainMinMax,
    GridAttack,
    ModelEnsemble,
    TransformDomains,
    UniversalGroups,
    WorstOfK,
)
from unionrobust.errors import UnionRobustError
from unionrobust.threats import L1, Linf, RotationTranslation, parse


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def img_data(n: int = 6):
    """``n`` 1x8x8 images and labels (the tiny MLP's input)."""
    return tiny_data(n)


# --------------------------------------------------------------------------- non-finite models
ATTACKS_ON_ONE_MODEL = [
    lambda: PGD(Linf(0.1), steps=2),
    lambda: APGD(Linf(0.1), steps=2),
    lambda: MSD(parse("linf:0.1, l2:1"), steps=2),
    lambda: AffineLp(Linf(0.1), L1(2.0), betas=[0.5], steps=2),
    lambda: AffineSpatial(Linf(0.1), RotationTranslation(10, 1), betas=[0.5], k=2, steps=2),
    lambda: GridAttack(RotationTranslation(10, 1)),
    lambda: WorstOfK(RotationTranslation(10, 1), k=2),
]


@pytest.mark.parametrize("factor", [float("nan"), float("inf")])
@pytest.mark.parametrize("make", ATTACKS_ON_ONE_MODEL)
def test_attacks_refuse_an_all_nonfinite_model(make, factor):
    x, y = img_data()
    with pytest.raises(UnionRobustError, match="non-finite logits") as err:
        make()(Scaled(tiny_mlp(), factor), x, y)
    one_line(err)


@pytest.mark.parametrize(
    "domains",
    [
        lambda m: ModelEnsemble([tiny_mlp(1), m]),
        lambda m: TransformDomains(m, "ori"),
        lambda m: UniversalGroups(m, 2),
    ],
)
def test_minmax_refuses_a_nonfinite_model_or_ensemble_member(domains):
    x, y = img_data()
    with pytest.raises(UnionRobustError, match="non-finite logits") as err:
        DomainMinMax(Linf(0.1), steps=2)(domains(Scaled(tiny_mlp(), float("nan"))), x, y)
    one_line(err)


# --------------------------------------------------------------------------- input mutation
class MutatesInput(nn.Module):
    """A model that scales its input in place: through ``.data`` or autograd-visible."""

    def __init__(self, visible: bool) -> None:
        super().__init__()
        self.inner, self.visible = tiny_mlp(), visible

    def forward(self, x):
        if self.visible:
            x.mul_(0.9)
        else:
            x.data.mul_(0.9)
        return self.inner(x)


@pytest.mark.parametrize("visible", [False, True])
def test_a_model_that_changes_its_input_is_named_and_the_caller_x_is_untouched(visible):
    x, y = img_data()
    x0 = x.clone()
    for run in (
        lambda: PGD(Linf(0.1), steps=2)(MutatesInput(visible), x, y),
        lambda: ur.evaluate(MutatesInput(visible), x, y, "linf:0.1", suite="quick",
                            progress=False),
        lambda: ur.attack_report(MutatesInput(visible), x, y, "pgd", "linf:0.1", steps=2,
                                 progress=False),
    ):  # fmt: skip
        with pytest.raises(UnionRobustError, match="changed its input in place") as err:
            run()
        one_line(err)
        assert torch.equal(x, x0)


def test_attacks_work_on_their_own_copy_of_x():
    x, y = img_data()
    x0 = x.clone()
    res = PGD(Linf(0.1), steps=3)(tiny_mlp(), x, y)
    assert torch.equal(x, x0)
    assert res.x_adv.data_ptr() != x.data_ptr()
    assert float((res.x_adv - x).abs().max()) <= 0.1 + 1e-6


# --------------------------------------------------------------------------- logits / inputs
class IntLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_mlp()

    def forward(self, x):
        return (self.inner(x) * 100).long()


def test_integer_logits_work_in_attacks_and_evaluation():
    x, y = img_data(8)
    model = IntLogits()
    res = PGD(Linf(0.1), steps=2)(model, x, y)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred != y)
    rep = ur.evaluate(model, x, y, "linf:0.1", suite="quick", progress=False)
    assert 0.0 <= rep.union_accuracy <= rep.clean_accuracy
    GridAttack(RotationTranslation(10, 1))(model, x, y)
    ur.attack_report(model, x, y, "pgd", "linf:0.1", steps=2, progress=False)


def test_float64_inputs_are_cast_to_the_model_dtype():
    x, y = img_data(8)
    model = tiny_mlp()
    res64 = PGD(Linf(0.1), steps=3)(model, x.double(), y)
    res32 = PGD(Linf(0.1), steps=3)(model, x, y)
    assert torch.equal(res64.success, res32.success)
    assert torch.allclose(res64.x_adv.double(), res32.x_adv.double())


# --------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [2**63, 2**64, 2**70, -1, 1e23, 2.5, "x"])
def test_attack_seeds_outside_the_range_are_refused(seed):
    with pytest.raises(UnionRobustError, match=r"seed must be a whole number in \[0, 2\*\*63\)"):
        PGD(Linf(0.1), seed=seed)
    x, y = img_data()
    with pytest.raises(UnionRobustError, match="seed"):
        ur.evaluate(tiny_mlp(), x, y, "linf:0.1", suite="quick", seed=seed, progress=False)


def test_the_largest_seed_is_accepted():
    x, y = img_data()
    PGD(Linf(0.1), seed=2**63 - 1, steps=1)(tiny_mlp(), x, y)


def cli(*argv: str) -> int:
    from unionrobust.cli import main as cli_main

    return cli_main.main(list(argv))


def cli_error(capsys, *argv: str) -> str:
    """Run a command that must fail: exit 2 and a one-line error on stderr."""
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 500, err[:1000]
    return err


SMALL = ["--model", "small-cnn", "--untrained", "--n", "4", "--no-progress"]


@pytest.mark.parametrize("seed", [str(2**64), str(2**63), "-1"])
def test_cli_seeds_outside_the_range_are_refused(capsys, seed):
    for command in ("eval", "attack"):
        err = cli_error(capsys, command, *SMALL, "--seed", seed)
        assert "--seed must be a whole number in [0, 2**63)" in err
    err = cli_error(capsys, "theory", "--seed", seed)
    assert "--seed must be a whole number in [0, 2**63)" in err


@pytest.mark.parametrize("value", ["1.0e+23", str(2**64), "-3"])
def test_config_seeds_outside_the_range_are_refused(value):
    from unionrobust.training.config import load_config

    for key in ("training.seed", "eval.seed"):
        with pytest.raises(UnionRobustError, match=r"seed' must be a whole number in \[0, 2") as e:
            load_config("mnist-small", [f"{key}={value}"])
        one_line(e)


def test_theory_memory_error_blames_mix(capsys):
    err = cli_error(capsys, "theory", "--mix", "100000000")
    assert "--mix 100000000" in err and "lower --mix" in err


# --------------------------------------------------------------------------- YAML
BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{c}: &{c} [{', '.join(['*' + p] * 9)}]"
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        ),
    ]
)


def test_alias_bombs_are_refused_before_they_are_built(tmp_path, capsys):
    from unionrobust.evaluation.multirobust import load_reference
    from unionrobust.safeyaml import YAMLTooLarge, safe_load

    with pytest.raises(YAMLTooLarge):
        safe_load(BOMB)
    assert safe_load("a: &x [1, 2]\nb: *x") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(YAMLTooLarge, match="refers to the node"):
        safe_load("a: &x [1, *x]")
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB + "\ntraining: {epochs: *h}\n")
    err = cli_error(capsys, "train", "--config", str(config), "--out", str(tmp_path / "o"))
    assert "alias" in err
    inline = "[" + ", ".join(["&a [1,1,1,1,1,1,1,1,1,1]"] + [
        f"&{c} [{','.join(['*' + p] * 10)}]" for p, c in zip("abcde", "bcdef", strict=True)
    ]) + "]"  # fmt: skip
    argv = ["--config", "mnist-small", "--set", f"training.epochs={inline}"]
    err = cli_error(capsys, "train", *argv, "--out", str(tmp_path / "o"))
    assert "alias" in err
    with pytest.raises(UnionRobustError, match="alias") as e:
        load_reference(config)
    one_line(e)
    assert not (tmp_path / "o").exists()


def test_a_binary_config_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    err = cli_error(capsys, "train", "--config", str(config), "--out", str(tmp_path / "o"))
    assert "not a text (UTF-8) YAML file" in err


def test_error_messages_never_quote_a_huge_value():
    from unionrobust.errors import check_int, short_repr

    huge = [list(range(1000))] * 1000
    with pytest.raises(UnionRobustError) as e:
        check_int("steps", huge)
    assert len(str(e.value)) < 200
    assert len(short_repr("x" * 10**6)) <= 80


# --------------------------------------------------------------------------- attack --out
def test_attack_outputs_threat_index_agrees_with_x_adv(tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "a"
    argv = ["--model", "small-cnn", "--untrained", "--n", "20", "--no-progress"]
    assert cli("attack", *argv, "--threats", "linf:0.3, l2:2", "--steps", "3", "--out",
               str(out)) == 0  # fmt: skip
    capsys.readouterr()
    t = load_file(str(out / "adversarial.safetensors"))
    x, _, _ = ur.load_data("mnist-embedded", "test", n=20)
    moved = (t["x_adv"] != x).flatten(1).any(dim=1)
    assert torch.equal(moved, t["threat_index"] >= 0)
    assert bool(moved.any())
    threats = parse("linf:0.3, l2:2")
    for i in moved.nonzero().flatten().tolist():
        k = int(t["threat_index"][i])
        assert bool(threats[k].contains((t["x_adv"] - x)[i : i + 1], x[i : i + 1]))
    assert not bool((moved & ~t["success"]).any())  # only re-checked successes move


@pytest.mark.parametrize("attack", ["pgd", "msd", "apgd-ce"])
def test_attack_report_x_adv_moves_exactly_where_threat_index_names_a_member(attack):
    x, y = tiny_data(30)
    threats = parse("linf:0.02, l2:0.2")
    rep = ur.attack_report(tiny_mlp(), x, y, attack, threats, steps=3, progress=False)
    moved = (rep.x_adv != x).flatten(1).any(dim=1)
    assert torch.equal(moved, rep.threat_index >= 0)
    assert not bool((moved & ~rep.success).any())
    assert bool((~rep.success & rep.clean_correct).any())  # some points survive


# --------------------------------------------------------------------------- classes, API misuse
class SevenOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Flatten(), nn.Linear(784, 7))

    def forward(self, x):
        return self.inner(x)


def test_a_model_with_fewer_outputs_than_the_data_has_classes_is_refused(tmp_path, capsys):
    src = tmp_path / "seven.py"
    src.write_text(
        "from torch import nn\n"
        "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))\n"
    )
    data = ur.get_dataset("mnist-embedded", split="test")
    _, y, _ = ur.load_data("mnist-embedded", "test", n=3)
    assert int(y.max()) < 7  # the labels seen alone would not reveal the mismatch
    for command in ("eval", "attack"):
        err = cli_error(capsys, command, "--model-module", f"{src}:build", "--n", "3",
                        "--no-progress")  # fmt: skip
        assert "returns 7 logits" in err and "10 classes" in err
    with pytest.raises(UnionRobustError, match="returns 7 logits") as e:
        ur.evaluate(SevenOutputs(), data, threats="linf:0.1", suite="quick", n=3, progress=False)
    one_line(e)
    with pytest.raises(UnionRobustError, match="returns 7 logits"):
        ur.attack_report(SevenOutputs(), data, attack="pgd", threats="linf:0.1", n=3,
                         progress=False)  # fmt: skip
    argv = ["--config", "mnist-small", "--set", "model.num_classes=7"]
    err = cli_error(capsys, "train", *argv, "--out", str(tmp_path / "t"))
    assert "returns 7 logits" in err and "training data has 10 classes" in err


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda x, y: ur.evaluate(tiny_mlp(), x, y, "linf:0.1", suite="quick", n=5.5,
                                  progress=False), "must be an integer, got 5.5"),
        (lambda x, y: ur.attack_report(tiny_mlp(), x, y, "pgd", "linf:0.1", n=5.5,
                                       progress=False), "must be an integer, got 5.5"),
        (lambda x, y: ur.evaluate(None, x, y, "linf:0.1", suite="quick", progress=False),
         "model must be a torch.nn.Module, got NoneType"),
        (lambda x, y: ur.evaluate(tiny_mlp(), x, y, "linf:0.1", suite=["pgd", 42],
                                  progress=False), "suite entries must be attack names, got 42"),
        (lambda x, y: ur.load_model("small-cnn", weights=123), "weights must be a file path"),
    ],
)  # fmt: skip
def test_api_misuse_is_a_one_line_error(call, needle):
    x, y = tiny_data(10)
    with pytest.raises(UnionRobustError) as e:
        call(x, y)
    assert needle in one_line(e)


# --------------------------------------------------------------------------- malicious pickles
class _Code:
    """Pickles a call of ``os.system`` (never run: weights_only refuses it)."""

    def __reduce__(self):
        import os

        return (os.system, ("echo never-run",))


def test_a_pickle_with_code_is_refused_as_such(tmp_path, capsys):
    import pickle

    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"w": torch.zeros(1), "x": _Code()}, zipped)
    raw.write_bytes(pickle.dumps({"x": _Code()}, protocol=4))
    for path in (zipped, raw):
        with pytest.raises(UnionRobustError, match="refused") as e:
            ur.load_model("small-cnn", weights=path)
        text = one_line(e)
        assert "corrupt" not in text and "forbids" in text and "nothing in it was run" in text
        assert "In PyTorch 2.6" not in text
        err = cli_error(capsys, "eval", "--model", "small-cnn", "--weights", str(path), "--n", "2")
        assert "refused" in err
    with pytest.raises(UnionRobustError, match=r"GLOBAL posix\.system"):
        ur.load_model("small-cnn", weights=zipped)


# --------------------------------------------------------------------------- training causes
def _tiny_train_config(**sections):
    from unionrobust.training.config import config_from_dict

    base = {
        "threats": "linf:0.1, l2:0.5",
        "strategy": {"name": "max", "steps": 1},
        "data": {"batch_size": 8, "augment": "none"},
        "training": {"epochs": 1, "max_steps_per_epoch": 2, "progress": False},
        "eval": {"n": 0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(base)


def test_an_infinite_trades_beta_is_refused(tmp_path):
    from unionrobust.training import train
    from unionrobust.training.strategies import make_strategy

    with pytest.raises(UnionRobustError, match="beta must be a finite number") as e:
        make_strategy("max", parse("linf:0.1"), beta=float("inf"), loss="trades")
    one_line(e)
    cfg = _tiny_train_config(strategy={"name": "max", "beta": float("inf"), "loss": "trades"})
    with pytest.raises(UnionRobustError, match="beta must be a finite number"):
        train(cfg, tmp_path / "r", model=tiny_mlp(), train_data=tiny_data(40))


def test_nan_initial_weights_are_named_not_called_a_divergence(tmp_path):
    from unionrobust.training import train

    model = tiny_mlp()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(UnionRobustError, match="initial weights are not finite") as e:
        train(_tiny_train_config(), tmp_path / "r", model=model, train_data=tiny_data(40))
    assert "lower optimizer.lr" not in one_line(e)


def test_a_nonfinite_loss_at_learning_rate_zero_does_not_blame_the_learning_rate():
    from unionrobust.training.config import TrainingConfig
    from unionrobust.training.finite import on_nonfinite

    with pytest.raises(UnionRobustError, match="learning rate is 0") as e:
        on_nonfinite(TrainingConfig(), 0, 0, 1, 0.0)
    assert "lower optimizer.lr" not in one_line(e)


# --------------------------------------------------------------------------- budgets
@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        (["attack"], "--steps", "1000000000"),
        (["attack"], "--restarts", "1000000"),
        (["spatial", "--attack", "worst-of-k"], "--k", "1000000000"),
        (["affine"], "--steps", "1000000000"),
        (["minmax", "transforms"], "--steps", "1000000000"),
    ],
)
def test_budgets_above_the_ceiling_need_force(capsys, command, flag, value):
    import time

    t0 = time.process_time()
    err = cli_error(capsys, *command, *SMALL, flag, value)
    assert f"{flag} {value} is above the ceiling" in err and "--force" in err
    assert time.process_time() - t0 < 20


def test_force_runs_a_budget_above_the_ceiling():
    from unionrobust.errors import BUDGET_CEILINGS, check_budget

    assert check_budget("--steps", str(BUDGET_CEILINGS["--steps"] + 1), force=True) == 10_001
    assert check_budget("--k", "7") == 7
    with pytest.raises(UnionRobustError, match="--k must be positive"):
        check_budget("--k", "0")


# --------------------------------------------------------------------------- messages
def test_cifar_without_root_names_the_root_option(monkeypatch, capsys):
    monkeypatch.delenv("UNIONROBUST_DATA", raising=False)
    err = cli_error(capsys, "eval", "--model", "small-cnn", "--untrained", "--data", "cifar10",
                    "--n", "2")  # fmt: skip
    assert "--root" in err and "--data-root" not in err


def test_compare_refuses_a_repeated_strategy_up_front(tmp_path):
    from unionrobust.training.compare import compare

    with pytest.raises(UnionRobustError, match="natural is listed twice") as e:
        compare(["natural", "natural"], tmp_path / "c", n_test=2, echo=lambda _: None)
    one_line(e)
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_resume_accepts_the_same_weights_under_another_name(tmp_path, capsys):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ur.save_weights(ur.load_model("small-cnn", untrained=True, num_classes=10), first)
    second.write_bytes(first.read_bytes())
    out = str(tmp_path / "run")
    argv = ["--model", "small-cnn", "--n", "4", "--suite", "quick", "--threats", "linf:0.1",
            "--no-progress", "--out", out]  # fmt: skip
    assert cli("eval", "--weights", str(first), *argv) == 0
    assert cli("eval", "--weights", str(second), *argv, "--resume") == 0
    other = tmp_path / "c.safetensors"
    ur.save_weights(ur.load_model("small-cnn", untrained=True, num_classes=10), other)
    capsys.readouterr()
    err = cli_error(capsys, "eval", "--weights", str(other), *argv, "--resume")
    assert "cannot resume" in err or "differs" in err


# --------------------------------------------------------------------------- signals in setup
class SignalsOnFirstForward(nn.Module):
    """``tiny_mlp`` that sends this process SIGTERM when the trainer moves it to its device
    (during setup, before any training step)."""

    def __init__(self, send: bool) -> None:
        super().__init__()
        self.inner, self.send = tiny_mlp(seed=0), send

    def to(self, *args, **kwargs):
        if self.send:
            import os
            import signal

            self.send = False
            os.kill(os.getpid(), signal.SIGTERM)
        return super().to(*args, **kwargs)

    def forward(self, x):
        return self.inner(x)


class Terminated(Exception):
    pass


def test_sigterm_during_setup_leaves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    import signal

    from safetensors.torch import load_file

    from unionrobust.training import train

    def handler(signum, frame):
        raise Terminated

    old = signal.signal(signal.SIGTERM, handler)
    try:
        cfg = _tiny_train_config()
        full = train(cfg, tmp_path / "full", model=SignalsOnFirstForward(False),
                     train_data=tiny_data(40))  # fmt: skip
        stopped = tmp_path / "stopped"
        with pytest.raises(Terminated):
            train(cfg, stopped, model=SignalsOnFirstForward(True), train_data=tiny_data(40))
        assert (stopped / "checkpoints" / "last.json").is_file()
        resumed = train(cfg, stopped, resume=True, model=SignalsOnFirstForward(False),
                        train_data=tiny_data(40))  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, old)
    assert resumed.steps == full.steps
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(stopped / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path, capsys):
    from unionrobust.training import train

    cfg = _tiny_train_config()
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.yaml").write_text("")
    train(cfg, out, resume=True, model=tiny_mlp(), train_data=tiny_data(40))
    assert "nothing to resume, starting fresh" in capsys.readouterr().err
