"""Dummy attacks and a tiny problem for the evaluation tests (helpers only, no tests).

The dummy attacks are honest-to-goodness attacks whose per-example outcome does not depend on the
batch: a one-step steepest ascent (randomised ℓ1 steps keyed by example id) and a keyed random
draw inside the ball; plus cheaters that return points outside the ball or the box.
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.attacks.base import Attack, AttackResult, loss_and_grad, misclassified
from unionrobust.evaluation import Suite, SuiteEntry
from unionrobust.losses import cross_entropy
from unionrobust.threats import parse


class OneStep(Attack):
    """δ = P(step(∇CE, α = scale·ε)) from δ = 0: FGSM in the threat's geometry."""

    name = "onestep"

    def __init__(self, threat, seed=0, scale=1.0):
        super().__init__(threat, seed=seed)
        self.scale = scale

    def _run(self, model, x, y, rand, clean_logits):
        _, _, grad = loss_and_grad(model, x, y, cross_entropy)
        zero = torch.zeros_like(x)
        step = self.threat.step(grad, self.scale * self.threat.size, zero, x, rand, 7)
        delta = self.threat.project(step, x)
        x_adv = (x + delta).clamp(0, 1)
        with torch.no_grad():
            logits = model(x_adv)
        return AttackResult(x_adv, misclassified(logits, y), torch.zeros(x.shape[0]))


class Noise(Attack):
    """One keyed random point inside ball ∩ box."""

    name = "noise"

    def _run(self, model, x, y, rand, clean_logits):
        x_adv = (x + self.threat.random_init(x, rand, 3)).clamp(0, 1)
        with torch.no_grad():
            logits = model(x_adv)
        return AttackResult(x_adv, misclassified(logits, y), torch.zeros(x.shape[0]))


class Cheater(Attack):
    """Returns points that fool the model once repaired but break the rules, claiming success:
    ``ball``: a step of ``factor``·ε along the ℓ∞ sign of the gradient (outside the ball);
    ``box``: the threat's own steepest step of size ε, not clipped to [0, 1];
    ``nan``: that step clipped to [0, 1], with one NaN pixel."""

    name = "cheater"

    def __init__(self, threat, seed=0, factor=50.0, mode="ball"):
        super().__init__(threat, seed=seed)
        self.factor = factor
        self.mode = mode

    def repaired(self, model, x, y, rand=None):
        """The point the cheater 'means' (in the box, not NaN) — what a lax check would count."""
        _, _, grad = loss_and_grad(model, x, y, cross_entropy)
        if self.mode == "ball":
            return (x + self.factor * self.threat.size * grad.sign()).clamp(0, 1)
        if rand is None:
            from unionrobust.rng import KeyedRandom

            rand = KeyedRandom.for_batch(self.seed, x.shape[0], x.device)
        step = self.threat.step(grad, self.threat.size, torch.zeros_like(x), x, rand, 7)
        return x + step if self.mode == "box" else (x + step).clamp(0, 1)

    def _run(self, model, x, y, rand, clean_logits):
        x_adv = self.repaired(model, x, y, rand)
        if self.mode == "nan":
            x_adv = x_adv.clone()
            x_adv.reshape(x.shape[0], -1)[:, 0] = float("nan")
        return AttackResult(
            x_adv, torch.ones(x.shape[0], dtype=torch.bool), torch.zeros(x.shape[0])
        )


class CallCounter:
    """Counts attack calls; raises after ``crash_after`` calls (a simulated kill) if set."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.calls = 0
        self.crash_after = crash_after

    def wrap(self, attack: Attack) -> Attack:
        return Counted(attack, self)


class Counted(Attack):
    """Delegates to ``inner``, counting calls."""

    def __init__(self, inner: Attack, counter: CallCounter) -> None:
        super().__init__(inner.threat, seed=inner.seed)
        self.inner = inner
        self.counter = counter

    def __call__(self, model, x, y, example_ids=None):
        c = self.counter
        if c.crash_after is not None and c.calls >= c.crash_after:
            raise KeyboardInterrupt("simulated kill")
        c.calls += 1
        return self.inner(model, x, y, example_ids)

    def _run(self, model, x, y, rand, clean_logits):  # pragma: no cover - never called
        raise NotImplementedError


def dummy_suite(threats, counter: CallCounter | None = None, kinds=("onestep", "noise")) -> Suite:
    """Per threat, the attacks ``kinds`` in order (onestep uses scale 0.5 then noise)."""
    union = parse(threats)
    builders = {
        "onestep": lambda t, s: OneStep(t, seed=s, scale=0.5),
        "noise": lambda t, s: Noise(t, seed=s),
        "onestep-full": lambda t, s: OneStep(t, seed=s, scale=1.0),
        "cheater": lambda t, s: Cheater(t, seed=s),
        "cheater-box": lambda t, s: Cheater(t, seed=s, mode="box"),
        "cheater-nan": lambda t, s: Cheater(t, seed=s, mode="nan"),
    }
    entries = []
    for i in range(len(union)):
        for k in kinds:
            build = builders[k]
            if counter is not None:

                def build(t, s, _b=builders[k]):
                    return counter.wrap(_b(t, s))

            entries.append(SuiteEntry(i, k, (), build))
    return Suite("dummy", union, tuple(entries))


def real_suite(threats, first: str = "pgd", steps: int = 4, n_targets: int = 2) -> Suite:
    """Per threat, the library's PGD (2 restarts) or APGD-CE, then targeted APGD, ``steps``
    steps each (keyed randomness: batch-independent outcomes)."""
    from unionrobust.attacks.apgd import APGD
    from unionrobust.attacks.pgd import PGD

    def opener(t, s):
        if first == "pgd":
            return PGD(t, steps=steps, restarts=2, seed=s)
        return APGD(t, steps=steps, seed=s)

    def targeted(t, s):
        return APGD(t, steps=steps, loss="dlr-targeted", n_targets=n_targets, seed=s)

    union = parse(threats)
    entries = []
    for i in range(len(union)):
        entries += [SuiteEntry(i, first, (), opener), SuiteEntry(i, "apgd-t", (), targeted)]
    return Suite("real", union, tuple(entries))


def linear_problem(n: int = 64, side: int = 6, seed: int = 0, flip: int = 5):
    """A 4-class linear classifier on side×side images whose class-difference vectors are dense
    for some pairs and spiky for others, so ℓ∞, ℓ2 and ℓ1 attacks break different points (the
    margin shrinks by ε‖w‖₁, ε‖w‖₂, ε‖w‖∞ respectively). Labels are its predictions, the first
    ``flip`` changed (clean errors)."""
    g = torch.Generator().manual_seed(seed)
    d = side * side
    w = torch.randn(4, d, generator=g) * 0.3
    w[1] *= 0.2
    w[1, :3] += torch.tensor([4.0, -4.0, 4.0])
    w[3] *= 0.2
    w[3, 10:12] += torch.tensor([-5.0, 5.0])
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 4))
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.zero_()
    x = torch.rand(n, 1, side, side, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[:flip] = (y[:flip] + 1) % 4
    return model, x, y


THREATS = "linf:0.05, l2:0.2, l1:1"
