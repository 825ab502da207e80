"""Measure the training-step time of quadratic models vs their ReLU twins, interleaved in one run.

    python tools/step_time.py --models resnet20 --batch 128 --steps 10
"""

from __future__ import annotations

import argparse

import torch

import quadexport as q
from quadexport.experiments.quadratize_study import median_step_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20"])
    ap.add_argument("--neuron", default="fan")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    x = torch.randn(a.batch, 1, a.size, a.size)
    y = torch.randint(0, 10, (a.batch,))
    for name in a.models:
        nets = {n: q.create_model(name, n, input_size=a.size) for n in (a.neuron, "relu")}
        opts = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in nets.items()}
        med = median_step_ms(nets, opts, x, y, a.steps, a.warmup)
        print(f"{name}: train step batch {a.batch} @ {a.size}x{a.size}, {torch.get_num_threads()} threads: "
              f"{a.neuron} {med[a.neuron]:.1f} ms, relu {med['relu']:.1f} ms, ratio {med[a.neuron] / med['relu']:.2f}x "
              f"(MAC ratio {q.count_macs(nets[a.neuron], (1, a.size, a.size)) / q.count_macs(nets['relu'], (1, a.size, a.size)):.2f}x)")


if __name__ == "__main__":
    main()
