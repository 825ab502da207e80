"""``quadexport info``: list models, neurons and datasets, with parameter and MAC counts."""

from __future__ import annotations

import argparse


def run(a: argparse.Namespace) -> int:
    import quadexport as q
    from quadexport.data import list_datasets

    if a.what in ("neurons", "all"):
        print("neurons:")
        for n in q.list_neurons():
            t = q.get_neuron(n)
            print(f"  {n:10s} {t.formula:50s} quadratic branches: {','.join(t.quadratic_branches)}  "
                  f"MACs ×{t.mac_factor()}")
    if a.what in ("models", "all"):
        shape = (a.in_channels, a.size, a.size)
        print(f"models (input {shape}): params / MACs, ReLU twin vs {a.neuron}")
        for m in q.list_models():
            r = q.create_model(m, "relu", in_channels=a.in_channels, input_size=a.size)
            f = q.create_model(m, a.neuron, in_channels=a.in_channels, input_size=a.size)
            print(f"  {m:10s} {q.count_params(r):>9,d} / {q.count_macs(r, shape) / 1e6:8.2f}M   "
                  f"{q.count_params(f):>9,d} / {q.count_macs(f, shape) / 1e6:8.2f}M")
    if a.what in ("datasets", "all"):
        print("datasets:", ", ".join(list_datasets()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list models, neuron types and datasets")
    p.add_argument("what", nargs="?", choices=("models", "neurons", "datasets", "all"), default="all")
    p.add_argument("--neuron", default="fan")
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.set_defaults(func=run)
