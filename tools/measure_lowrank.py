"""Measure the onnxruntime cost of the low-rank quadratic neuron (issue #12 item 2), for docs/quadratize.md.

Three studies, each timed with the shared interleaved timer (:func:`quadexport.bench.timing.time_sessions`),
onnxruntime CPU, ``ORT_ENABLE_ALL``, 1 intra-op and 1 inter-op thread, every model exported in decomposed mode:

- ``structure`` (ResNet20, 1×28×28, rank 4) and ``structure18`` (ResNet-18, first of ``--ranks18``): the op
  structure of the layer, one design choice at a time (:data:`DESIGNS`): ``proto`` (the issue's crude prototype:
  gate ``Add(1, U_g(V_g x))`` with ``V_g`` of the layer's kernel, power ``U_b(V_b(x*x))`` through its own
  bottleneck, BatchNorm not folded), ``+fold`` (BN folded: scale into ``r`` and ``U_b``, shift into ``U_b``'s
  bias), ``+bias1`` (the gate's ``1`` in ``U_g``'s bias, no ``Add``), ``+shared`` (power ``U_b((V x)^2)``
  through the gate's bottleneck), ``+1x1 V`` (``V`` pointwise: the ``lowrank`` layer as shipped), and
  ``gate-only`` (no power term: a floor), against the linear model and ``fan``.
- ``ranks``: ResNet20 (1×28×28): ReLU twin, ``fan``, ``lowrank`` k = 1, 4, 8.
- ``resnet18``: torchvision ResNet-18 at 3×224×224 (random weights), every conv made quadratic carrying its
  weights (``quadexport.quadratize`` when present, else :func:`quadratize_convs` here): original, ``fan``,
  ``lowrank`` at two ranks.

Each study runs at batch 1 and 64. Ratios are of the per-run *process CPU time* medians (``cpu_p50``: with one
thread, the run's compute without the time other jobs preempted it) and of the wall-clock medians (``p50``).

Usage: PYTHONPATH=$PWD python tools/measure_lowrank.py [--study structure ranks resnet18] [--batches 1 64]
       [--min-seconds 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import quadexport
from quadexport._compat import import_torchvision
from quadexport.bench.timing import TimingConfig, TimingUnit, loadavg, time_sessions
from quadexport.layers import QuadConv2d, QuadLayer
from quadexport.layers.init import perturb_quadratic
from quadexport.transforms import create_model

from quadexport.exporter.decomposed import replace_modules
from quadexport.exporter.fold import fold_batchnorm

log = logging.getLogger("measure_lowrank")


@dataclass
class Row:
    """One timed model of a study."""

    study: str
    name: str
    batch: int
    ops: int
    macs: int
    cpu_p50_ms: float
    p50_ms: float
    spread: float
    cpu_ratio: float = 0.0
    wall_ratio: float = 0.0


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------

class Variant(nn.Module):
    """A low-rank layer with one op structure (measurement only), built from a (BN-folded or not) ``lowrank``
    QuadConv2d: ``shared`` power through the gate's ``V`` (else its own ``V_b`` on ``x*x``), the gate's ``1`` in
    ``U_g``'s bias (``one_in_bias``) or as its own ``Add``, ``V`` with the layer's kernel (``v_full``) or 1×1 as
    shipped, or no power term (``power=False``)."""

    def __init__(self, layer: QuadLayer, shared: bool, one_in_bias: bool, v_full: bool, power: bool = True) -> None:
        super().__init__()
        self.r, self.v, self.u_b = layer.r, layer.g.v, layer.b
        self.u_g = copy.deepcopy(layer.g.u)
        self.shared, self.one_in_bias, self.power = shared, one_in_bias, power
        with torch.no_grad():
            if not one_in_bias:
                self.u_g.bias -= 1.0
            if v_full:  # V with the layer's own geometry (what the prototype and first design used)
                r = layer.r
                self.v = nn.Conv2d(r.in_channels, self.v.out_channels, r.kernel_size, r.stride, r.padding,
                                   r.dilation, r.groups, bias=False)
                nn.init.kaiming_normal_(self.v.weight)
            self.v_b = None if shared else copy.deepcopy(self.v)
            if self.v_b is not None:
                self.v_b.weight.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.v(x)
        g = self.u_g(z)
        if not self.one_in_bias:
            g = g + 1.0
        y = self.r(x) * g
        if not self.power:
            return y
        p = self.u_b(z * z) if self.shared else self.u_b(self.v_b(x * x))
        return y + p


DESIGNS = {  # name: (shared, one_in_bias, v_full, power, fold BN)
    "proto": (False, False, True, True, False), "+fold": (False, False, True, True, True),
    "+bias1": (False, True, True, True, True), "+shared": (True, True, True, True, True),
    "+1x1 V (lowrank)": (True, True, False, True, True), "gate-only": (True, True, False, False, True)}
"""The op-structure study, one design choice at a time (``proto``: the issue's crude prototype)."""


def structure_models(base: nn.Module, shape: tuple[int, ...]) -> dict[str, tuple[nn.Module, bool]]:
    """:data:`DESIGNS` variants of a ``lowrank`` model (BN folded first where the design says so)."""
    folded, _ = fold_batchnorm(base, torch.randn(2, *shape))
    out = {}
    for name, (shared, bias1, v_full, power, fold) in DESIGNS.items():
        m = copy.deepcopy(folded if fold else base)
        replace_modules(m, lambda _, mod: (Variant(mod, shared, bias1, v_full, power) if isinstance(mod, QuadLayer)
                                           else None))
        out[name] = (m, fold)
    return out


def quadratize_convs(model: nn.Module, neuron: str) -> nn.Module:
    """Every ``nn.Conv2d`` of ``model`` → :class:`QuadConv2d` (``neuron``) whose ``r`` branch carries the conv's
    weights (in place; returned). Uses ``quadexport.quadratize`` when that exists."""
    qz = getattr(quadexport, "quadratize", None)
    if callable(qz):
        return qz(model, neuron=neuron)

    def swap(_: str, m: nn.Module) -> nn.Module | None:
        if type(m) is not nn.Conv2d:
            return None
        q = QuadConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                       bias=m.bias is not None, padding_mode=m.padding_mode, neuron=neuron)
        q.r.load_state_dict(m.state_dict())
        return q

    replace_modules(model, swap)
    return model


def resnet20_models(rank: int = 4, structure: bool = False) -> dict[str, tuple[nn.Module, bool]]:
    """``{name: (model, fold_bn)}`` for the ResNet20 studies (1×28×28 input)."""
    shape = (1, 28, 28)

    def zoo(neuron: str) -> nn.Module:
        torch.manual_seed(0)
        return perturb_quadratic(create_model("resnet20", neuron=neuron, in_channels=1, input_size=28), 0.01,
                                 calib_shape=shape, calib_n=8)

    out = {"relu": (zoo("relu"), True), "fan": (zoo("fan"), True)}
    if not structure:
        for k in (1, 4, 8):
            out[f"lowrank k={k}"] = (zoo(f"lowrank:{k}"), True)
        return out
    return {**out, **structure_models(zoo(f"lowrank:{rank}"), shape)}


def resnet18_models(ranks: tuple[int, ...], structure: bool = False) -> dict[str, tuple[nn.Module, bool]]:
    """torchvision ResNet-18 (random weights, 1000 classes) and its quadratic versions (``structure``: the
    :data:`DESIGNS` of ``lowrank`` at the first rank instead of the ranks)."""
    tv = import_torchvision()
    shape = (3, 224, 224)

    def build(neuron: str | None) -> nn.Module:
        torch.manual_seed(0)
        m = tv.models.resnet18(weights=None)
        if neuron is not None:
            quadratize_convs(m, neuron)
        return perturb_quadratic(m, 0.005, calib_shape=shape, calib_n=8)

    out = {"original": (build(None), True), "fan": (build("fan"), True)}
    if structure:
        return {**out, **structure_models(build(f"lowrank:{ranks[0]}"), shape)}
    return {**out, **{f"lowrank k={k}": (build(f"lowrank:{k}"), True) for k in ranks}}


# ---------------------------------------------------------------------------------------------------------------
# export and timing
# ---------------------------------------------------------------------------------------------------------------

def export_all(models: dict[str, tuple[nn.Module, bool]], shape: tuple[int, ...], folder: Path) -> dict[str, Path]:
    paths = {}
    for i, (name, (model, fold)) in enumerate(models.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paths[name] = quadexport.export(model, folder / f"m{i}.onnx", input_shape=shape, fold_bn=fold)
    return paths


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def n_ops(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


def time_study(study: str, models: dict[str, tuple[nn.Module, bool]], shape: tuple[int, ...],
               batches: list[int], cfg: TimingConfig, big: bool = False) -> list[Row]:
    """Export, then time every model at each batch size (interleaved); ratios against the first model."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(models, shape, Path(tmp))
        macs = {n: quadexport.count_macs(m, shape) for n, (m, _) in models.items()}
        sessions = {n: session(p) for n, p in paths.items()}
        rng = np.random.default_rng(0)
        for batch in batches:
            feed = {"input": rng.standard_normal((batch, *shape)).astype(np.float32)}
            units = [TimingUnit(n, (lambda s=s: s.run(None, feed)), lambda out: bool(np.isfinite(out[0]).all()))
                     for n, s in sessions.items()]
            c = cfg if not (big and batch > 1) else TimingConfig(warmup=1, min_iters=3, min_seconds=0.0,
                                                                   chunk_seconds=1e-3, batch=batch)
            stats = time_sessions(units, TimingConfig(**{**asdict(c), "batch": batch}))
            ref = stats[next(iter(sessions))]
            for n, st in stats.items():
                rows.append(Row(study, n, batch, n_ops(paths[n]), macs[n], st.cpu_p50_ms, st.p50_ms, st.spread,
                                st.cpu_p50_ms / ref.cpu_p50_ms, st.p50_ms / ref.p50_ms))
                log.info("%s b=%d %-20s cpu %.2f ms (x%.3f) wall %.2f ms (x%.3f)", study, batch, n, st.cpu_p50_ms,
                         rows[-1].cpu_ratio, st.p50_ms, rows[-1].wall_ratio)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| study | model / design | batch | ONNX nodes | MACs (M) | CPU p50 ms | × first | wall p50 ms | "
             "× first | spread |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.study} | {r.name} | {r.batch} | {r.ops} | {r.macs / 1e6:.1f} | {r.cpu_p50_ms:.2f} | "
                     f"{r.cpu_ratio:.2f} | {r.p50_ms:.2f} | {r.wall_ratio:.2f} | {r.spread:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", nargs="+", default=["structure", "ranks", "structure18", "resnet18"],
                    choices=["structure", "ranks", "structure18", "resnet18"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--ranks18", nargs="+", type=int, default=[4, 16], help="lowrank ranks for ResNet-18")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per model (small models)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    cfg = TimingConfig(warmup=5, min_iters=10, min_seconds=a.min_seconds, chunk_seconds=0.1)
    rows: list[Row] = []
    load0 = loadavg()
    if "structure" in a.study:
        rows += time_study("structure", resnet20_models(structure=True), (1, 28, 28), a.batches, cfg)
    if "ranks" in a.study:
        rows += time_study("ranks", resnet20_models(), (1, 28, 28), a.batches, cfg)
    if "structure18" in a.study:
        rows += time_study("structure18", resnet18_models(tuple(a.ranks18), structure=True), (3, 224, 224),
                           a.batches, cfg, big=True)
    if "resnet18" in a.study:
        rows += time_study("resnet18", resnet18_models(tuple(a.ranks18)), (3, 224, 224), a.batches, cfg, big=True)
    print(markdown(rows))
    print(f"\nload average (1/5/15 min) before: {load0}, after: {loadavg()}; cores: {os.cpu_count()}; "
          f"onnxruntime {ort.__version__}")
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
