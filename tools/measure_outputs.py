"""Measure the docs/export.md table "Beyond classifiers": models with dense, dict and tuple outputs, exported with
``dynamic_size=True``, their parity at the traced size and at another one, and their latency next to the ReLU twin.

Each model is a ReLU network quadratized with :func:`quadexport.quadratize` (quadratic terms then perturbed with
N(0, 0.05²), as a fine-tuned model's are); its twin is the ReLU network it came from. Both are exported
(decomposed, opset 20, dynamic size) and timed under onnxruntime (1 thread, batch 1, at the other size) with the
interleaved timing of ``quadexport bench``. Prints a Markdown table and writes it as JSON.

    PYTHONPATH=. .venv/bin/python tools/measure_outputs.py --out /tmp/outputs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import quadexport as q
from quadexport.bench.timing import TimingConfig, TimingUnit, time_sessions
from quadexport.exporter.outputs import flatten, structure_of
from quadexport.layers.init import perturb_quadratic


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, c: int = 3, w: int = 16) -> None:
        super().__init__()
        self.e1, self.e2, self.e3 = _block(c, w), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2)
        self.u2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _block(4 * w, 2 * w)
        self.u1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _block(2 * w, w)
        self.out = nn.Conv2d(w, c, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        y = self.d2(torch.cat([self.u2(self.e3(b)), b], 1))
        return x - self.out(self.d1(torch.cat([self.u1(y), a], 1)))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_block(3, 16), _block(16, 32, 2), _block(32, 32))
        self.seg, self.cls = nn.Conv2d(32, 5, 1), nn.Linear(32, 10)

    def forward(self, x):
        f = self.trunk(x)
        return {"seg": self.seg(f), "cls": self.cls(f.mean((2, 3)))}


class TupleNet(TwoHeads):
    def forward(self, x):
        f = self.trunk(x)
        return self.cls(f.mean((2, 3))), f


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(2, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
                                  nn.Conv1d(32, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.Conv1d(32, 4, 1))

    def forward(self, x):
        return self.body(x)


class DetectorHead(nn.Module):
    """A torchvision detector without its post-processing: ``{"bbox_regression", "cls_logits"}`` per anchor."""

    def __init__(self, det: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = det.backbone, det.head

    def forward(self, x):
        return self.head(list(self.backbone(x).values()))


def _tv(arch: str, **kw) -> nn.Module:
    return q.create_model(f"torchvision:{arch}", "relu", in_channels=3, input_size=64, **kw)


MODELS = {  # name: (builder, traced shape, other shape, quadratize include globs or None for the default)
    "lraspp_mobilenet_v3_large": (lambda: _tv("lraspp_mobilenet_v3_large", num_classes=4), (3, 64, 64),
                                  (3, 96, 80), None),
    "deeplabv3_mobilenet_v3_large aux": (lambda: _tv("deeplabv3_mobilenet_v3_large", num_classes=4, aux_loss=True),
                                         (3, 64, 64), (3, 96, 80), ["backbone.1.*", "classifier.*",
                                                                    "aux_classifier.*"]),
    "ssdlite320 backbone+head": (lambda: DetectorHead(_tv("ssdlite320_mobilenet_v3_large", num_classes=3)),
                                 (3, 64, 64), (3, 128, 128), ["backbone.features.1.*"]),
    "U-Net denoiser": (UNet, (3, 32, 32), (3, 48, 40), ["*"]),
    "two heads (dict)": (TwoHeads, (3, 32, 32), (3, 48, 40), ["*"]),
    "tuple": (TupleNet, (3, 32, 32), (3, 48, 40), ["*"]),
    "1-D conv": (Conv1dNet, (2, 256), (2, 1000), ["*"]),
}


def _worst_rel(sess, model: nn.Module, shape: tuple[int, ...]) -> float:
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    with torch.no_grad():
        ref = [t.numpy().astype(np.float64) for t in flatten(model(torch.from_numpy(x)))]
    got = sess.run(None, {"input": x})
    return max(float(np.linalg.norm(g - r) / np.linalg.norm(r)) for g, r in zip(got, ref))


def measure(name: str, folder: Path, seconds: float) -> dict:
    build, shape, other, include = MODELS[name]
    torch.manual_seed(0)
    twin = build().eval()
    quad = perturb_quadratic(q.quadratize(twin, "fan", input_shape=shape, include=include), 0.05)
    row: dict = {"model": name, "traced": "x".join(map(str, shape[1:])), "other": "x".join(map(str, other[1:]))}
    t0 = time.perf_counter()
    pq = q.export(quad, folder / "quad.onnx", input_shape=shape, dynamic_size=True)
    row["export_s"] = round(time.perf_counter() - t0, 1)
    pt = q.export(twin, folder / "twin.onnx", input_shape=shape, dynamic_size=True)
    s = structure_of(pq)
    row["outputs"] = ", ".join(f"{o.name} ({o.kind})" for o in s.outputs)
    row["task"] = s.task
    sq, st = q.make_session(pq, threads=1), q.make_session(pt, threads=1)
    row["rel_l2_traced"] = _worst_rel(sq, quad, shape)
    row["rel_l2_other"] = _worst_rel(sq, quad, other)
    x = np.random.default_rng(2).standard_normal((1, *other)).astype(np.float32)
    units = [TimingUnit("quad", lambda: sq.run(None, {"input": x})),
             TimingUnit("twin", lambda: st.run(None, {"input": x}))]
    stats = time_sessions(units, TimingConfig(warmup=5, min_iters=20, min_seconds=seconds, batch=1))
    row["quad_ms"], row["twin_ms"] = stats["quad"].p50_ms, stats["twin"].p50_ms
    row["ratio"] = stats["quad"].p50_ms / stats["twin"].p50_ms
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="NAME")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per model and side (default 2)")
    p.add_argument("--out", default=None, help="also write the rows as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            rows.append(measure(name, Path(tmp), a.seconds))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| model | outputs (kind) | traced → other size | rel_l2 traced / other | p50 quad / twin (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['outputs']} | {r['traced']} → {r['other']} | {r['rel_l2_traced']:.1e} / "
              f"{r['rel_l2_other']:.1e} | {r['quad_ms']:.2f} / {r['twin_ms']:.2f} | {r['ratio']:.2f}x |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
