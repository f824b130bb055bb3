"""The attack contract: ``attack(model, x, y) -> AttackResult``.

Every attack validates its inputs, runs with the model in eval mode and its parameters frozen
(restored exactly afterwards: per-module training flags, ``requires_grad``, BatchNorm statistics
untouched because of eval mode), takes input gradients with ``torch.autograd.grad`` so no
parameter ``.grad`` is written, and returns the best perturbation found over all iterations and
restarts. Randomness is keyed by example (see :mod:`unionrobust.rng`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch
from torch import nn

from unionrobust.attacks.best import BestTracker
from unionrobust.errors import (
    NonFiniteModel,
    UnionRobustError,
    check_example_ids,
    check_images,
    check_int,
    check_labels,
    check_logits,
    check_seed,
)
from unionrobust.rng import KeyedRandom
from unionrobust.threats import AdditiveThreat, ThreatModel, Union


@dataclass
class AttackResult:
    """What an attack returns for a batch of B examples.

    ``x_adv``: adversarial inputs (B, ...) in [0,1] and inside the threat model.
    ``success``: bool (B,), the model misclassifies ``x_adv`` (or predicts the target, if targeted).
    ``loss``: (B,) the attack's loss at ``x_adv``.
    ``threat_index``: long (B,) for union attacks, the member whose ball holds ``x_adv``
    (-1 where ``x_adv`` equals ``x``); ``None`` for single-threat attacks.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    threat_index: torch.Tensor | None = None

    def detach(self) -> AttackResult:
        return AttackResult(
            self.x_adv.detach(),
            self.success.detach(),
            self.loss.detach(),
            None if self.threat_index is None else self.threat_index.detach(),
        )


@contextlib.contextmanager
def frozen_model(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters inside the block; the exact previous state after it."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, flag in modes:
            m.training = flag


def autocast_for(x: torch.Tensor, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16/float16 autocast on CUDA when ``enabled``; a no-op elsewhere."""
    if enabled and x.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision (AMP), integer and bool logits as float32 (``log_softmax`` needs a float);
    float32/float64 logits unchanged."""
    if logits.dtype in (torch.float32, torch.float64):
        return logits
    return logits.float()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def forward_failed(err: BaseException, x: torch.Tensor) -> UnionRobustError:
    """The one-line error for a model whose forward pass (or freezing) raised ``err``."""
    return UnionRobustError(
        f"the model's forward failed on a batch of shape {tuple(x.shape)} "
        f"({_first_line(err)}); check its input channels/size and its code"
    )


@contextlib.contextmanager
def frozen_checked(models: list[nn.Module], x: torch.Tensor) -> Iterator[None]:
    """:func:`frozen_model` for every model of ``models``, under ``no_grad``; a model that cannot
    be frozen (uninitialised lazy parameters) is the one-line error of :func:`forward_failed`."""
    with contextlib.ExitStack() as stack, torch.no_grad():
        for m in models:
            try:
                stack.enter_context(frozen_model(m))
            except Exception as err:
                raise forward_failed(err, x) from None
        yield


def model_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float logits of ``model`` at ``x`` (call it under ``no_grad`` with the model frozen),
    shape-checked, the shared check of every clean pass and re-check.

    The model runs on a copy of ``x``: a model that changes its input in place (``x.mul_``,
    ``x.data.mul_`` inside ``forward``) would move the attacks' reference point and the
    caller's tensor, so it is detected and refused in one line; so is any failure of the
    forward pass. Integer logits are cast to float."""
    probe = x.clone()
    try:
        logits = model(probe)
    except UnionRobustError:
        raise
    except Exception as err:  # the user's model: report its error in one line
        raise forward_failed(err, x) from None
    if not torch.equal(probe, x):
        raise UnionRobustError(
            "the model changed its input in place (e.g. x.mul_ or x.data.mul_ in forward); "
            "attacks and evaluation need a model that leaves its input unchanged: work on a "
            "copy (x = x * 0.9, or x = x.clone())"
        )
    check_logits(logits, x.shape[0])
    return upcast(logits)


def check_some_finite(logits: torch.Tensor) -> torch.Tensor:
    """Bool (B,) of the rows whose logits are all finite; raise if no row is (a broken model,
    e.g. diverged weights: ``argmax`` of a NaN row is 0, so it would look correct or broken at
    random). Isolated non-finite rows are the caller's to count (evaluation/checks.py)."""
    finite = torch.isfinite(logits).all(dim=1)
    if logits.shape[0] and not bool(finite.any()):
        raise NonFiniteModel(
            f"the model returned non-finite logits (NaN or inf) for all {logits.shape[0]} "
            "examples of a batch; it is broken (check its weights, e.g. a diverged training), "
            "not robust"
        )
    return finite


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of ``model``'s first floating parameter or buffer (None if it has
    none): inputs of another float dtype are cast to it."""
    for t in (*model.parameters(), *model.buffers()):
        if not isinstance(t, nn.parameter.UninitializedTensorMixin) and t.is_floating_point():
            return t.dtype
    return None


def input_grad(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """d loss.sum() / d ``leaf``; zero where the loss does not depend on ``leaf`` through
    autograd (integer logits: piecewise constant, so the gradient is zero almost everywhere)."""
    if not loss.requires_grad:
        return torch.zeros_like(leaf)
    (grad,) = torch.autograd.grad(loss.sum(), leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_and_grad(
    model: nn.Module,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    amp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward: (logits, per-example loss, d loss.sum() / d x_adv)."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast_for(x_adv, amp):
            logits = model(x_adv)
        logits = upcast(logits)
        loss = loss_fn(logits, y)
        grad = input_grad(loss, x_adv)
    return logits.detach(), loss.detach(), grad.detach()


def forward(model: nn.Module, x_adv: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """Logits (float32) of ``model`` at ``x_adv`` without building a graph."""
    with torch.no_grad(), autocast_for(x_adv, amp):
        return upcast(model(x_adv))


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bool (B,): the prediction is wrong, or the logits are non-finite (a broken output is
    never robust: ``argmax`` of a NaN row is 0)."""
    return (logits.argmax(dim=1) != y) | ~torch.isfinite(logits).all(dim=1)


def attacks_accepting(threat: ThreatModel) -> list[str]:
    """Names of the attack classes (defined so far) whose ``threat_kind`` is ``threat``'s kind."""
    names, todo = set(), list(Attack.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        kind = cls.threat_kind
        if "name" in vars(cls) and kind is not ThreatModel and isinstance(threat, kind):
            names.add(cls.name)
    return sorted(names)


def check_kind(cls: type[Attack], threat: ThreatModel | Union | Any) -> None:
    """Raise the one-line error if a member of ``threat`` is not of ``cls.threat_kind``, naming
    the attacks that accept it (other input types are left to the attack's own checks)."""
    members = threat.members if isinstance(threat, Union) else (threat,)
    for m in members:
        if isinstance(m, ThreatModel) and not isinstance(m, cls.threat_kind):
            kind = cls.threat_kind.__name__.removesuffix("Threat").lower()
            raise UnionRobustError(
                f"{cls.__name__} attacks {kind} threat models, not {m.spec}; attack it with "
                f"{', '.join(attacks_accepting(m))} (or default_attack)"
            )


def restart_rows(
    restarts: int, tracker: BestTracker
) -> Iterator[tuple[int, torch.Tensor | None]]:
    """Yield ``(restart, rows)`` for ``restarts`` passes: ``rows`` None (the whole batch) for
    the first pass, then the index of the examples ``tracker`` has not broken yet (read when
    the pass starts, so a pass sees the previous ones' successes); stops early once every
    example is broken. One host sync per pass after the first."""
    for r in range(restarts):
        if r == 0:
            yield 0, None
            continue
        idx = (~tracker.success).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        yield r, idx


def run_restarts(
    restarts: int,
    x: torch.Tensor,
    y: torch.Tensor,
    rand: KeyedRandom,
    tracker: BestTracker,
    attack_once: Callable[[torch.Tensor, torch.Tensor, KeyedRandom, BestTracker, int], None],
) -> BestTracker:
    """Run ``attack_once(x, y, rand, tracker, restart)`` ``restarts`` times, the first on the
    whole batch and each later one only on the examples ``tracker`` has not broken yet.

    ``attack_once`` folds its iterates into the tracker it is given (a tracker restricted to the
    remaining examples, merged back afterwards). Costs one host sync per restart; an example's
    result does not depend on the other examples of the batch.
    """
    for r, idx in restart_rows(restarts, tracker):
        if idx is None:
            attack_once(x, y, rand, tracker, r)
            continue
        local = tracker.subset(idx)
        attack_once(x[idx], y[idx], rand.subset(idx), local, r)
        tracker.merge(local, idx)
    return tracker


class Attack(ABC):
    """Base class: input checks, model freezing and keyed randomness around ``_run``."""

    #: short registry name, e.g. "pgd"
    name: str = "attack"
    #: True for attacks whose result names a member (``threat_index`` is a tensor)
    union_attack: bool = False
    #: the kind of threat model this attack runs on (``AdditiveThreat``, ``SearchedThreat``, or
    #: ``ThreatModel`` for attacks that combine others); checked for every member
    threat_kind: ClassVar[type[ThreatModel]] = AdditiveThreat

    def __init__(self, threat: ThreatModel | Union, seed: int = 0, amp: bool = False) -> None:
        check_kind(type(self), threat)
        self.threat = threat
        self.seed = check_seed(seed)
        self.amp = bool(amp)
        #: the most rows one model call may hold when an attack stacks passes side by side
        #: (:meth:`with_row_budget`); None: the rows of the batch it is called with
        self.row_budget: int | None = None

    def with_row_budget(self, rows: int | None) -> Attack:
        """Let the attack stack passes (restarts, targets) side by side into model calls of up
        to ``rows`` rows — the evaluation engine passes its batch size, the memory the caller
        chose; None: no more rows than the batch the attack is called with. Verdicts do not
        depend on it (stacked passes draw what they draw one after another), only the cost.
        Returns the attack."""
        self.row_budget = None if rows is None else check_int("row budget", rows, 1)
        return self

    def models_of(self, target: Any) -> list[nn.Module]:
        """The models an attack on ``target`` runs (frozen and checked by ``__call__``): the
        model itself; attacks over several models (the min-max domains) override this."""
        if not isinstance(target, nn.Module):
            raise UnionRobustError(f"model must be a torch.nn.Module, got {type(target).__name__}")
        return [target]

    def empty_result(self, target: Any, x: torch.Tensor) -> AttackResult:
        """The result for an empty batch (the model is not called)."""
        index = torch.zeros(0, dtype=torch.int64, device=x.device)
        return AttackResult(
            x.detach().clone(),
            torch.zeros(0, dtype=torch.bool, device=x.device),
            torch.zeros(0, dtype=x.dtype, device=x.device),
            index if self.union_attack else None,
        )

    @final
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None = None,
    ) -> AttackResult:
        """The one entry point (Foolbox's ``Attack.__call__``): checks, frozen models, keyed
        randomness, then ``_run``. ``model`` is what :meth:`models_of` accepts.

        The attack works on its own copy of ``x`` (cast to the model's float dtype), so the
        caller's tensor is never changed; the clean pass (:func:`model_output`) refuses a model
        that changes its input in place, and a model whose logits are non-finite for the whole
        batch (:func:`check_some_finite`; a non-finite row at a candidate point counts as
        misclassified, as in :mod:`unionrobust.evaluation.checks`)."""
        models = self.models_of(model)
        check_images(x)
        check_labels(y, x.shape[0])
        y = y.to(device=x.device, dtype=torch.int64)
        check_example_ids(example_ids, x.shape[0])
        if x.shape[0] == 0:  # nothing to attack: an empty result, the model is not called
            return self.empty_result(model, x)
        rand = KeyedRandom.for_batch(self.seed, x.shape[0], x.device, example_ids)
        x = x.detach().to(model_dtype(models[0]) or x.dtype).clone()
        with frozen_checked(models, x):
            clean = [model_output(m, x) for m in models]
            for logits in clean:
                check_labels(y, x.shape[0], int(logits.shape[1]))
                check_some_finite(logits)
            return self._run(model, x, y, rand, clean[0])

    @abstractmethod
    def _run(
        self,
        model: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        clean_logits: torch.Tensor,
    ) -> AttackResult:
        """Attack a validated batch; the model is already frozen and in eval mode."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat})"
