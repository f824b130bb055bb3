"""Cost of the geometry (projections and ℓ1 step directions) relative to one model pass.

For MNIST-shaped batches (100 and 250 by default) every operation is timed against one
forward + backward (gradient w.r.t. the input, as attacks take it) of the MNIST CNN of Madry et
al. and of LeNet, from ``unionrobust.models.build_model`` (a 2-conv-layer CNN defined here
is used if the model registry is unavailable). Timings are interleaved round-robin and the
median of the repeats is kept, so the ratios of one run are comparable on a shared CPU.

    python benchmarks/bench_geometry.py [--batches 100 250] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from unionrobust.geometry import (
    l1_topk_direction,
    project_l1,
    project_l1_box,
    project_l2,
    project_l2_box,
    project_linf_box,
    slide_direction,
)


class TwoConvCNN(nn.Module):
    """Fallback MNIST CNN: conv(32)-pool-conv(64)-pool-fc(1024)-fc(10)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 1024),
            nn.ReLU(),
            nn.Linear(1024, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def models() -> dict[str, nn.Module]:
    try:
        from unionrobust.models import build_model

        out = {"mnist-cnn": build_model("mnist-cnn"), "lenet": build_model("lenet")}
    except Exception:  # registry missing or changed: keep the benchmark usable
        out = {"2-conv CNN": TwoConvCNN()}
    for m in out.values():
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return out


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        xa = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xa), y)
        torch.autograd.grad(loss, xa)

    return run


def operations(x: torch.Tensor, g: torch.Generator) -> dict[str, Callable[[], object]]:
    """Each projection on a perturbation just outside its ball (as after an attack step)."""
    b = x.shape[0]
    noise = torch.randn(x.shape, generator=g)
    grad = torch.randn(x.shape, generator=g)
    k = torch.randint(5, 21, (b,), generator=g)
    d_inf = noise.sign() * 0.35
    d_2 = noise / noise.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * 2.2
    d_1 = noise / noise.flatten(1).abs().sum(dim=1).reshape(-1, 1, 1, 1) * 11.0
    return {
        "project ℓ∞ ∩ box": lambda: project_linf_box(d_inf, x, 0.3),
        "project ℓ2": lambda: project_l2(d_2, 2.0),
        "project ℓ1 (Duchi)": lambda: project_l1(d_1, 10.0),
        "project ℓ1 ∩ box": lambda: project_l1_box(d_1, x, 10.0),
        "project ℓ2 ∩ box": lambda: project_l2_box(d_2, x, 2.0),
        "ℓ1 direction, k ∈ [5, 20]": lambda: l1_topk_direction(grad, k, k_max=20),
        "SLIDE direction, q = 0.99": lambda: slide_direction(grad, 0.99),
    }


def timeit(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call, measured round-robin over ``fns``."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[100, 250])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    nets = models()

    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print()
    names = list(nets)
    header = "| operation | batch | ms | " + " | ".join(f"÷ t_fb {n}" for n in names) + " |"
    print(header)
    print("|" + "---|" * (3 + len(names)))
    for b in args.batches:
        x = torch.rand(b, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (b,), generator=g)
        fns: dict[str, Callable[[], object]] = {
            f"fb {n}": forward_backward(m, x, y) for n, m in nets.items()
        }
        ops = operations(x, g)
        fns.update(ops)
        t = timeit(fns, args.repeats)
        for n in names:
            cells = " | ".join("1.00" if n2 == n else "" for n2 in names)
            print(f"| forward+backward {n} | {b} | {t[f'fb {n}'] * 1e3:.2f} | {cells} |")
        for op in ops:
            ratios = " | ".join(f"{t[op] / t[f'fb {n}']:.3f}" for n in names)
            print(f"| {op} | {b} | {t[op] * 1e3:.2f} | {ratios} |")


if __name__ == "__main__":
    main()
