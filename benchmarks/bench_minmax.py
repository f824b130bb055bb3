"""Min-max domain attacks, affine and spatial attacks on briefly trained MNIST models.

Models A-D of Wang et al. App. C.1 (MLP, All-CNN, LeNet, LeNetV2) are trained for a few epochs
on the embedded MNIST subset (4000 training images; Adam, lr 2e-3, batch 50), then:

1. Ensemble attack over the four models, min-max vs average weights (Wang Table 1 style):
   per-model accuracy under attack and ASR_all, for ℓ∞ / ℓ2 / ℓ1.
2. Universal perturbation for groups of K ∈ {2, 4, 5, 10} images (Wang Table 2 style).
3. Affine vs union on LeNet: ℓ∞ + ℓ1 and ℓ∞ + rotation-translation (Tramèr & Boneh Table 3).
4. Grid attack time with and without batch shrinking, as a ratio to one forward of the batch.

Usage: python benchmarks/bench_minmax.py [--quick] [--threads N]. Prints markdown tables; the
figures are from one run (models trained in it), so compare rows, not absolute values.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import fit_embedded, interleaved, machine_note, markdown_table, set_threads

from unionrobust.attacks.affine import AffineLp, AffineSpatial
from unionrobust.attacks.minmax import DomainMinMax, ModelEnsemble, UniversalGroups
from unionrobust.attacks.spatial import GridAttack
from unionrobust.data import load_embedded_mnist
from unionrobust.threats import L1, L2, Linf, RotationTranslation

MODELS = {"A": "mlp", "B": "all-cnn", "C": "lenet", "D": "lenet-v2"}


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def ensemble_table(models, x, y, steps: int) -> str:
    labels = list(MODELS)
    domains = ModelEnsemble([models[k] for k in labels], labels)
    # Wang App. C.2 (MNIST): γ = 3 (ℓ∞, ℓ2), 5 (ℓ1); β = 1/50 (ℓ∞), 1/100 (ℓ1, ℓ2); CW κ = 50
    settings = [(Linf(0.2), 1 / 50, 3.0), (L2(3.0), 1 / 100, 3.0), (L1(20.0), 1 / 100, 5.0)]
    rows = []
    for threat, w_lr, gamma in settings:
        base = None
        for opt in ("avg", "min max"):
            weights = "uniform" if opt == "avg" else "minmax"
            atk = DomainMinMax(threat, steps=steps, w_lr=w_lr, gamma=gamma, weights=weights)
            res = atk(domains, x, y)
            m = res.metrics()
            lift = "-" if base is None else f"{100 * (m['asr_all'] - base) / base:+.1f}%"
            base = m["asr_all"] if base is None else base
            accs = [100 - m[f"asr_{k}"] for k in labels]
            rows.append([threat.spec, opt, *accs, m["asr_all"], lift])
    header = ["threat", "opt", *[f"Acc{k} %" for k in labels], "ASR_all %", "lift"]
    return markdown_table(header, rows)


def universal_table(models, x, y, steps: int) -> str:
    rows = []
    for key, eps in (("C", 0.3), ("A", 0.2)):
        model = models[key]
        for k in (2, 4, 5, 10):
            n = x.shape[0] - x.shape[0] % k
            cells = []
            for weights in ("uniform", "minmax"):
                atk = DomainMinMax(Linf(eps), steps=steps, w_lr=1 / 50, gamma=4.0, weights=weights)
                m = atk(UniversalGroups(model, k), x[:n], y[:n]).metrics()
                cells += [m["asr_avg"], m["asr_gp"]]
            lift = "-" if cells[1] == 0 else f"{100 * (cells[3] - cells[1]) / cells[1]:+.1f}%"
            rows.append([f"{MODELS[key]} (ε={eps})", k, *cells, lift])
    header = ["model", "K", "avg ASR_avg", "avg ASR_gp", "minmax ASR_avg", "minmax ASR_gp"]
    return markdown_table([*header, "lift"], rows)


def affine_table(model, x, y, steps: int) -> str:
    betas = (0.0, 0.25, 0.5, 0.75, 1.0)
    rows = []
    cases = [
        ("linf:0.1 + l1:5", lambda b: AffineLp(Linf(0.1), L1(5.0), betas=[b], steps=steps)),
        (
            "linf:0.1 + rt:10:1",
            lambda b: AffineSpatial(
                Linf(0.1), RotationTranslation(10, 1), betas=[b], k=10, steps=steps
            ),
        ),
    ]
    for label, make in cases:
        robust = {}
        for b in betas:
            res = make(b)(model, x, y)
            robust[b] = ~res.success
        union = (robust[0.0] & robust[1.0]).double().mean().item()
        affine = torch.stack(list(robust.values())).all(0).double().mean().item()
        per_beta = [100 * robust[b].double().mean().item() for b in betas]
        grid = "-"  # the union again, its rt part attacked by the exhaustive grid (as T&B §4)
        if "rt" in label:
            rt_grid = ~GridAttack(RotationTranslation(10, 1))(model, x, y).success
            grid = 100 * (robust[1.0] & rt_grid & robust[0.0]).double().mean().item()
        rows.append([label, *per_beta, 100 * union, grid, 100 * affine])
    header = ["S1 + S2", *[f"acc β={b:g} %" for b in betas], "acc union %"]
    header += ["acc union, rt by grid %", "acc affine %"]
    return markdown_table(header, rows)


def grid_table(model, x, y) -> str:
    rt = RotationTranslation(10, 1)
    with_shrink = GridAttack(rt, shrink=True)
    without = GridAttack(rt, shrink=False)

    def fwd():
        with torch.no_grad():
            model(x)

    times = interleaved(
        {
            "forward": fwd,
            "shrink": lambda: with_shrink(model, x, y),
            "full": lambda: without(model, x, y),
        },
        warmup=0,
        rounds=1,
    )
    r1, r2 = with_shrink(model, x, y), without(model, x, y)
    assert torch.equal(r1.success, r2.success)
    acc = 100 * (~r1.success).double().mean().item()
    rows = [
        ["shrink", times["shrink"], times["shrink"] / times["forward"], acc],
        ["no shrink", times["full"], times["full"] / times["forward"], acc],
        ["speed-up", times["full"] / times["shrink"], "-", "-"],
    ]
    return markdown_table(
        ["grid attack rt:10:1 (775 points)", "seconds", "÷ one forward", "acc %"], rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    n, steps, epochs = (40, 5, 1) if args.quick else (200, 20, 3)
    xtr, ytr = load_embedded_mnist("train")
    xte, yte = load_embedded_mnist("test")
    x, y = xte[:n], yte[:n]
    t0 = time.perf_counter()
    models = {
        k: fit_embedded(name, epochs, lr=2e-3, batch=50, data=(xtr, ytr))
        for k, name in MODELS.items()
    }
    print(machine_note())
    print(f"\ntrained A-D for {epochs} epoch(s) in {time.perf_counter() - t0:.0f} s; clean acc:")
    print(markdown_table(list(MODELS), [[100 * accuracy(models[k], xte, yte) for k in MODELS]]))
    m = n // 2
    print(f"\n### Ensemble attack over A-D, {m} test images, {steps} steps, CW κ=50\n")
    print(ensemble_table(models, x[:m], y[:m], steps))
    print(f"\n### Universal perturbation (ℓ∞, {steps} steps, β=1/50, γ=4), {n} images\n")
    print(universal_table(models, x, y, steps))
    print(f"\n### Affine vs union on LeNet, {m} images, {steps} PGD steps\n")
    print(affine_table(models["C"], x[:m], y[:m], steps))
    print(f"\n### Grid attack with and without batch shrinking, LeNet, {m} images\n")
    print(grid_table(models["C"], x[:m], y[:m]))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
