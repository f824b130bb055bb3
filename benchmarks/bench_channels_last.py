"""Channels-last vs channels-first small CNNs on the CPU (issue 17: the main job's budget).

The same weights in both memory formats (``SmallCNN(channels_last=...)``), the same inputs;
per round, each format's forward pass (no grad) and forward + backward (gradient w.r.t. the
input, as an attack step takes it) over ``--batch`` MNIST-sized inputs, in interleaved rounds,
timed with process CPU time (``os.times``). Also max-pool alone on the first conv's output. Prints
the markdown table of ``benchmarks/RESULTS.md``: milliseconds per call and the ratio.

    OMP_NUM_THREADS=1 python benchmarks/bench_channels_last.py [--batch 120] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os

import torch
from _common import markdown_table

from unionrobust.models.small import SmallCNN

NETS = {
    "small-cnn5 (5×5, FC 256: the main job's net)": {"kernel": 5, "padding": 0, "hidden": 256},
    "small-cnn (3×3, FC 64)": {"kernel": 3, "padding": 1, "hidden": 64},
}


CALLS = (("fwd", "forward"), ("fwdbwd", "forward + backward"), ("pool", "max-pool (conv 1 out)"))


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def per_call(fn, calls: int) -> float:
    fn()  # warm-up
    c = cpu()
    for _ in range(calls):
        fn()
    return (cpu() - c) / calls * 1000.0


def measure(net: dict, batch: int, rounds: int, calls: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    first = SmallCNN(10, 1, (28, 28), **net).eval()
    last = SmallCNN(10, 1, (28, 28), **net, channels_last=True).eval()
    last.load_state_dict(first.state_dict())
    x = torch.rand(batch, 1, 28, 28)
    out: dict[str, list[float]] = {}

    def fwd(m):
        with torch.no_grad():
            m(x)

    def fwd_bwd(m):
        xg = x.clone().requires_grad_(True)
        m(xg).sum().backward()

    def pool(fmt):
        h = first.features[0](x).contiguous(memory_format=fmt)
        return lambda: torch.max_pool2d(h, 2)

    for _ in range(rounds):  # interleaved: the machine's load hits both formats alike
        for name, m in (("first", first), ("last", last)):
            out.setdefault(f"fwd {name}", []).append(per_call(lambda m=m: fwd(m), calls))
            out.setdefault(f"fwdbwd {name}", []).append(per_call(lambda m=m: fwd_bwd(m), calls))
        for name, fmt in (("first", torch.contiguous_format), ("last", torch.channels_last)):
            out.setdefault(f"pool {name}", []).append(per_call(pool(fmt), calls))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = []
    for label, net in NETS.items():
        r = measure(net, args.batch, args.rounds, args.calls)
        med = {k: sorted(v)[len(v) // 2] for k, v in r.items()}
        for what, name in (
            ("fwd", "forward"),
            ("fwdbwd", "forward + backward"),
            ("pool", "max-pool (conv 1 output)"),
        ):
            a, b = med[f"{what} first"], med[f"{what} last"]
            rows.append([label, name, f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}×"])
    print(
        f"batch {args.batch}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"median of {args.rounds} interleaved rounds of {args.calls} calls, process CPU ms/call"
    )
    print(
        markdown_table(["net", "call", "channels-first ms", "channels-last ms", "speed-up"], rows)
    )


if __name__ == "__main__":
    main()
