"""Measure which standard-op decomposition of the quadratic layers onnxruntime runs fastest (CPU).

For dense layers: "naive" (one Gemm per branch) vs "stacked" ([W_r; W_g] in one Gemm + Split).
For conv layers: "naive" (one Conv per branch) vs "stacked" ([W_r; W_g] in one Conv + Split).

Each variant is exported with the dynamo exporter (opset 20, dynamic batch) and timed in onnxruntime at
ORT_ENABLE_ALL. Timing: after 20 warm-up runs, ROUNDS rounds alternate the variants (so machine noise hits both
alike); each round times REPS runs; the reported figure is the median over rounds of the per-run mean.

With --modes it instead times one model (default resnet20, batch 1) as torch eager vs the three export modes
(decomposed; function with the bodies inlined by onnxruntime; fused on the kernel library), same alternating scheme.

Usage: .venv/bin/python tools/measure_decomposition.py [--quick] [--json out.json]
       .venv/bin/python tools/measure_decomposition.py --modes [--model resnet20] [--batch 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quadexport.exporter.decomposed import StackedQuadLinear, replace_modules
from quadexport.layers.init import perturb_quadratic
from quadexport.layers.quad import QuadConv2d, QuadLinear
from quadexport.transforms import create_model


class _StackedQuadConv2d(nn.Module):
    """Measurement-only: [W_r; W_g] in one Conv, then split (Fan neuron)."""

    def __init__(self, layer: QuadConv2d) -> None:
        super().__init__()
        r, g = layer.r, layer.g
        self.conv = copy.deepcopy(r)
        self.conv.out_channels = 2 * r.out_channels
        self.conv.weight = nn.Parameter(torch.cat([r.weight, g.weight]).detach())
        br = r.bias if r.bias is not None else torch.zeros(r.out_channels)
        self.conv.bias = nn.Parameter(torch.cat([br, g.bias]).detach())
        self.b, self.m = layer.b, r.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, g = self.conv(x).split(self.m, dim=1)
        return r * g + self.b(x * x)


class DeepMLP(nn.Module):
    def __init__(self, width: int, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[QuadLinear(width, width) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _export(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=20, external_data=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _bench(sessions: dict[str, object], x: np.ndarray, rounds: int, reps: int) -> dict[str, float]:
    feeds = {"input": x}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                s.run(None, feeds)
            times[k].append((time.perf_counter() - t0) / reps * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _bench_torch(model: nn.Module, x: np.ndarray, rounds: int, reps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    times = []
    with torch.inference_mode():
        for _ in range(20):
            model(xt)
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(reps):
                model(xt)
            times.append((time.perf_counter() - t0) / reps * 1e3)
    return statistics.median(times)


def modes(args: argparse.Namespace, rounds: int, reps: int) -> list[dict]:
    """torch eager vs decomposed vs function (bodies) vs fused (kernel)."""
    from quadexport.exporter import export, make_session

    shape = (3, 32, 32) if args.model.startswith("resnet") else (1, 28, 28)
    model = perturb_quadratic(create_model(args.model, in_channels=shape[0], input_size=shape[1]),
                              0.005 if args.model.startswith("resnet") else 0.02, calib_shape=shape, calib_n=8)
    x = np.random.default_rng(0).standard_normal((args.batch, *shape)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sess = {}
        for mode in ("decomposed", "function", "fused"):
            p = export(model, Path(tmp) / f"{mode}.onnx", mode=mode)
            kl = {"decomposed": "auto", "function": "never", "fused": "always"}[mode]
            sess[mode] = make_session(p, threads=args.threads, kernel_library=kl)
        t = _bench(sess, x, rounds, reps)
        t["torch eager"] = _bench_torch(model, x, rounds, reps, args.threads)
    import onnxruntime as ort

    print(f"{args.model} batch {args.batch}, {args.threads} threads, ORT {ort.__version__} ORT_ENABLE_ALL, "
          f"torch {torch.__version__}: ms per run (median)")
    for k, v in t.items():
        print(f"  {k:12s} {v:.4f} ms  ({v / t['torch eager']:.2f}× torch eager)")
        rows.append({"model": args.model, "batch": args.batch, "threads": args.threads, "variant": k, "ms": v})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--modes", action="store_true", help="time torch eager vs the three export modes instead")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rounds, reps = (7, 20) if args.quick else (15, 40)
    if args.modes:
        rows = modes(args, rounds, reps)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return 0
    torch.manual_seed(0)
    cases = [
        ("mlp (zoo, 784-64-64-10)", lambda: create_model("mlp", in_channels=1, input_size=28), (1, 28, 28), "linear"),
        ("mlp 4×QuadLinear 512", lambda: DeepMLP(512), (512,), "linear"),
        ("cnn (zoo, 3×32×32)", lambda: create_model("cnn", in_channels=3, input_size=32), (3, 32, 32), "conv"),
        ("resnet20 (zoo)", lambda: create_model("resnet20", in_channels=3, input_size=32), (3, 32, 32), "conv"),
    ]
    results = []
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, ORT_ENABLE_ALL, CPU; ms per run (median)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, shape, kind in cases:
            base = perturb_quadratic(build(), 0.005 if name.startswith("resnet") else 0.02, calib_shape=shape,
                                     calib_n=8)
            stacked = copy.deepcopy(base)
            if kind == "linear":
                replace_modules(stacked, lambda _, m: StackedQuadLinear(m) if isinstance(m, QuadLinear) else None)
            else:
                replace_modules(stacked, lambda _, m: _StackedQuadConv2d(m) if isinstance(m, QuadConv2d) else None)
            paths = {}
            x2 = torch.randn(2, *shape)
            for var, model in (("naive", base), ("stacked", stacked)):
                p = Path(tmp) / f"{len(results)}_{var}.onnx"
                _export(model, x2, p)
                paths[var] = p
            for threads in (1, 2):
                sess = {k: _session(p, threads) for k, p in paths.items()}
                for batch in (1, 64):
                    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                    ref = base(torch.from_numpy(x)).detach().numpy()
                    for s in sess.values():
                        out = s.run(None, {"input": x})[0]
                        assert np.linalg.norm(out - ref) <= 1e-5 * np.linalg.norm(ref), "variant differs"
                    t = _bench(sess, x, rounds, reps)
                    row = {"model": name, "kind": kind, "threads": threads, "batch": batch, **t,
                           "stacked/naive": t["stacked"] / t["naive"]}
                    results.append(row)
                    print(f"{name:26s} threads {threads} batch {batch:3d}: naive {t['naive']:.4f}  "
                          f"stacked {t['stacked']:.4f}  ratio {row['stacked/naive']:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
