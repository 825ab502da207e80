"""Where the onnxruntime cost of the first quadratic channels of a compressed model comes from (issue #13).

Builds single-change variants of the ReLU twin of a Fan-quadratic QResNet (every other layer linear, refitted), for
each chosen layer:

- ``quad``: the layer wholly quadratic (the exported ``QuadConv2d``); ``quad-g`` / ``quad-b``: without ``b`` / ``g``;
- ``mixed<k>``: a :class:`~quadexport.layers.mixed.MixedQuad` with ``k`` quadratic channels (``split="conv"``),
  ``mixed<k>-slice`` (``split="slice"``), ``mixed<k>-g`` / ``mixed<k>-b`` (only the gate / only the power branch);
- ``split<k>``: no quadratic term, the layer's (BN-folded) conv cut into two convs of ``k`` and ``C-k`` outputs joined
  by ``Concat`` (what a mixed layer adds besides its quadratic branches);
- ``…-relu1st``: the exported graph rewritten so that a ``Concat → Relu`` becomes ``Relu``s before the ``Concat``
  (exact), which lets onnxruntime fuse them into the convs again: isolates the lost Conv+ReLU fusion;
- ``…-g-bn`` (with ``--bias-bn``): the gate-only forms with their per-channel bias ``Add`` (``qbias``, where the
  folded BN's shift goes when ``b`` is dropped) rewritten as a ``BatchNormalization`` (exact), which onnxruntime
  keeps in NCHWc layout;

and for the whole model: ``twin`` (the zoo ReLU twin, the reference), ``linear`` (every layer linear: the twin's graph
with refitted weights, a control that should read 1.00), ``original`` (every layer quadratic), ``all-mixed<k>``,
``all-split<k>``, ``all-mixed<k>-relu1st`` (every quadratic layer, to see the per-layer fixed cost scale).

Variants are built with a hand-made :class:`~quadexport.compress.plan.Plan` (identity channel order: which channels
are quadratic does not change the cost), :func:`~quadexport.compress.rewrite.compress_model` and
:func:`~quadexport.compress.rewrite.fold_mixed_bn`, and exported decomposed. For each: node count and op histogram of
the exported ONNX and of onnxruntime's optimised graph (``ORT_ENABLE_ALL``: ``FusedConv``/NCHWc ``Conv`` with a fused
activation or sum, ``ReorderInput``/``ReorderOutput``), the latency ratio to the twin (all variants timed interleaved
with :func:`quadexport.compress.latency.time_onnx`, spinning off, ``--threads`` intra-op threads; wall-clock p50 and
process-CPU-time p50, the latter robust to preemption on a loaded machine), and the onnxruntime profiler's kernel time
per op type.

Usage::

    PYTHONPATH=$PWD python tools/compress_overhead.py --json docs/compression/overhead.json
    PYTHONPATH=$PWD python tools/compress_overhead.py --model resnet8 --layers layer3.0.conv1 --ks 8 --quick
    PYTHONPATH=$PWD python tools/compress_overhead.py --run runs/qfan --json out.json   # a trained run's weights
    PYTHONPATH=$PWD python tools/compress_overhead.py --layers layer1.0.conv2 --ks 8 --all-k 0 \
        --include quad mixed8-g --bias-bn

Every ONNX rewrite is checked against the plain export under onnxruntime (relative L2 ≤ 1e-5). The graph rewrites
and the profile aggregation live in :mod:`quadexport.experiments.onnx_rewrites` and
:mod:`quadexport.experiments.ort_profile`; the weights come from :func:`quadexport.layers.init.perturb_quadratic`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from quadexport.bench.timing import loadavg
from quadexport.compress.job import twin_of
from quadexport.compress.latency import time_onnx
from quadexport.compress.permute import conv_shortcuts
from quadexport.compress.plan import LayerPlan, Plan
from quadexport.compress.rewrite import compress_model, fold_mixed_bn
from quadexport.compress.stats import channel_scores, collect_stats
from quadexport.compress.structure import describe
from quadexport.experiments.onnx_rewrites import bias_add_to_bn, op_histogram, rel_diff, relu_before_concat
from quadexport.experiments.ort_profile import families, profile
from quadexport.exporter import export
from quadexport.layers.init import perturb_quadratic
from quadexport.layers.mixed import copy_rows, like
from quadexport.transforms import create_model
from quadexport.zoo import count_macs

log = logging.getLogger("compress_overhead")


@dataclass
class Variant:
    """One model to measure: ``layers`` maps a quadratic layer to ``(k, g, b)`` (missing: linear; ``k`` = its
    channel count and both branches: the layer stays a ``QuadLayer``); ``split`` maps a linear layer to the ``k``
    at which its conv is cut in two; ``relu_first``: the ONNX ``Concat → Relu`` rewrite; ``bias_bn``: the ONNX
    rewrite of a per-channel constant ``Add`` into ``BatchNormalization``; ``base``: ``"plan"``,
    ``"twin"`` or ``"original"``."""

    key: str
    change: str
    layers: dict[str, tuple[int, bool, bool]] = field(default_factory=dict)
    split: dict[str, int] = field(default_factory=dict)
    mixed_split: str = "conv"
    relu_first: bool = False
    bias_bn: bool = False
    base: str = "plan"


def variants(channels: dict[str, int], chosen: list[str], ks: list[int], all_k: int,
             bias_bn: bool = False) -> list[Variant]:
    """The variants of the module docstring, for layers ``chosen`` (of ``channels``: layer → output channels);
    ``bias_bn``: with the ``…-g-bn`` ones."""
    vs = [Variant("twin", "ReLU twin (reference)", base="twin"),
          Variant("linear", "every layer linear (twin graph, refitted weights)")]
    for name in chosen:
        c = channels[name]
        k0 = min(ks[0], c)
        vs += [Variant(f"{name} quad", f"{name} wholly quadratic ({c} ch)", {name: (c, True, True)}),
               Variant(f"{name} quad-g", f"{name} whole, gate only (no b, no x*x)", {name: (c, True, False)}),
               *([Variant(f"{name} quad-g-bn", f"{name} whole, gate only, bias Add as BN", {name: (c, True, False)},
                          bias_bn=True)] if bias_bn else []),
               Variant(f"{name} quad-b", f"{name} whole, power only (no g)", {name: (c, False, True)})]
        for k in ks:
            if k < c:
                vs += [Variant(f"{name} mixed{k}", f"{name} mixed k={k}/{c}, split conv", {name: (k, True, True)}),
                       Variant(f"{name} mixed{k}-slice", f"{name} mixed k={k}/{c}, split slice",
                               {name: (k, True, True)}, mixed_split="slice")]
        if k0 < c:
            vs += [Variant(f"{name} mixed{k0}-g", f"{name} mixed k={k0}, gate only", {name: (k0, True, False)}),
                   *([Variant(f"{name} mixed{k0}-g-bn", f"{name} mixed k={k0}, gate only, bias Add as BN",
                              {name: (k0, True, False)}, bias_bn=True)] if bias_bn else []),
                   Variant(f"{name} mixed{k0}-b", f"{name} mixed k={k0}, power only", {name: (k0, False, True)}),
                   Variant(f"{name} split{k0}", f"{name} linear conv cut {k0}+{c - k0}, Concat", split={name: k0}),
                   Variant(f"{name} mixed{k0}-relu1st", f"{name} mixed k={k0}, Relu before Concat",
                           {name: (k0, True, True)}, relu_first=True),
                   Variant(f"{name} split{k0}-relu1st", f"{name} split {k0}, Relu before Concat", split={name: k0},
                           relu_first=True)]
    if all_k:
        part = {n: (min(all_k, c), True, True) for n, c in channels.items()}
        cut = {n: all_k for n, c in channels.items() if all_k < c}
        vs += [Variant(f"all-mixed{all_k}", f"all {len(channels)} layers mixed k={all_k}", part),
               Variant(f"all-split{all_k}", f"all {len(cut)} layers wider than {all_k} cut, linear", split=cut),
               Variant(f"all-mixed{all_k}-relu1st", f"all layers mixed k={all_k}, Relu before Concat", part,
                       relu_first=True)]
    vs.append(Variant("original", "every layer quadratic (uncompressed)", base="original"))
    return vs


# -- models -----------------------------------------------------------------------------------------------------

def fan_model(name: str, seed: int, rel: float) -> nn.Module:
    """A zoo Fan model with its ReLinear init plus N(0, (rel·std(W_r))²) on the gate and power weights, BN statistics
    from random inputs: quadratic terms of plausible size (latency does not depend on training). Perturbations of a
    fixed size instead (0.02) make an untrained ResNet20's residual stream overflow by stage 3."""
    torch.manual_seed(seed)
    m = create_model(name, neuron="fan")
    return perturb_quadratic(m, rel, seed=seed, scale="r_std", calib_shape=input_shape(m), calib_n=256)


def input_shape(model: nn.Module) -> tuple[int, ...]:
    cfg = model.quadexport_config
    size = cfg.get("input_size", 28)
    size = [size, size] if isinstance(size, int) else list(size)
    return (int(cfg.get("in_channels", 1)), *map(int, size))


class SplitConv(nn.Module):
    """A conv cut into two convs (the first ``k`` outputs and the rest) joined by ``torch.cat``: the linear part of
    a mixed layer without its quadratic branches (measurement only)."""

    def __init__(self, conv: nn.Conv2d, k: int) -> None:
        super().__init__()
        c = conv.out_channels
        self.a, self.b = like(conv, k, bias=True), like(conv, c - k, bias=True)
        copy_rows(self.a, conv, slice(0, k))
        copy_rows(self.b, conv, slice(k, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


@torch.no_grad()
def build(v: Variant, fan: nn.Module, scores: dict, structure: Any, shortcut: str) -> nn.Module:
    """The model of variant ``v`` (eval mode, BN folded into mixed and split layers)."""
    if v.base in ("twin", "original"):
        m = twin_of(fan) if v.base == "twin" else copy.deepcopy(fan)
        return (conv_shortcuts(m) if shortcut == "conv" else m).eval()
    layers = {}
    for name, sc in scores.items():
        c = int(sc["lin"].score.numel())
        k, g, b = v.layers.get(name, (0, True, True))
        layers[name] = LayerPlan(name, c, list(range(k)), k, g, b,
                                 slot_fit=["exact" if g and b else ("no_b" if g else "no_g")] * k)
    cm, spec = compress_model(fan, Plan(0.0, 1, layers, {}, structure), scores, v.mixed_split, shortcut)
    fold_mixed_bn(cm, spec, structure)
    cm.eval()
    bn_of = structure.group_of_producer()
    for name, k in v.split.items():
        bn_name = bn_of[name][1]
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(cm.get_submodule(name), cm.get_submodule(bn_name))
        cm.set_submodule(name, SplitConv(fused, k))
        cm.set_submodule(bn_name, nn.Identity())
    return cm.eval()


# -- the measurement ------------------------------------------------------------------------------------------------

def source_model(a: argparse.Namespace) -> nn.Module:
    if a.run:
        from quadexport.runs.checkpoint import build_from_checkpoint, read_checkpoint

        return build_from_checkpoint(read_checkpoint(a.run)).eval()
    return fan_model(a.model, a.seed, a.rel)


def export_variant(v: Variant, model: nn.Module, shape: tuple[int, ...], out: Path, opset: int) -> dict[str, Any]:
    """Export ``model`` and apply the variant's ONNX rewrites (checked against the plain export under onnxruntime);
    the exported graph's node count and histogram."""
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in v.key)
    path = export(model, out / f"{slug}.onnx", mode="decomposed", input_shape=shape, opset=opset)
    info: dict[str, Any] = {}
    if v.relu_first or v.bias_bn:
        plain = path.with_name(f"{slug}.plain.onnx")
        path.rename(plain)
        src = plain
        for flag, fn, key in ((v.relu_first, relu_before_concat, "relu_first_rewrites"),
                              (v.bias_bn, bias_add_to_bn, "bias_bn_rewrites")):
            if flag:
                info[key] = fn(src, path)
                src = path
        diff = info["rewrite_rel_diff"] = rel_diff(plain, path, shape)
        if not diff <= 1e-5:
            raise SystemExit(f"{v.key}: the ONNX rewrite changed the outputs (rel. diff {diff:.2e})")
    g = onnx.load(str(path)).graph
    return {"path": path, "onnx_nodes": len(g.node), "onnx_ops": op_histogram(g.node), **info}


def measure(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    fan = source_model(a)
    shape = input_shape(fan)
    structure = describe(fan, shape)
    x = torch.randn(a.calib, *shape, generator=torch.Generator().manual_seed(a.seed + 1))
    with torch.no_grad():
        if not bool(torch.isfinite(fan(x)).all()):
            raise SystemExit("the source model's outputs on random inputs are NaN/Inf: lower --rel")
    scores = channel_scores(collect_stats(fan, x))
    channels = {n: int(sc["lin"].score.numel()) for n, sc in scores.items()}
    missing = [n for n in a.layers if n not in channels]
    if missing:
        raise SystemExit(f"not quadratic layers of {a.model}: {missing}; choose from {sorted(channels)}")
    vs = [v for v in variants(channels, a.layers, a.ks, a.all_k, a.bias_bn) if not any(x in v.key for x in a.exclude)
          and (not a.include or v.key in ("twin", "linear") or any(x in v.key for x in a.include))]
    rows: list[dict[str, Any]] = []
    macs_twin = None
    for v in vs:
        t0 = time.perf_counter()
        model = build(v, fan, scores, structure, a.shortcut)
        macs = count_macs(model, shape)
        macs_twin = macs if v.key == "twin" else macs_twin
        info = export_variant(v, model, shape, out, a.opset)
        rows.append({"key": v.key, "change": v.change, "macs": macs, "macs_ratio": macs / macs_twin, **info})
        log.info("%-32s %5.1f s  ONNX %3d nodes", v.key, time.perf_counter() - t0, info["onnx_nodes"])
    log.info("profiling (%d models interleaved, load %s)", len(rows), loadavg())
    prof = profile({r["key"]: r["path"] for r in rows}, shape, a.batches, a.threads, a.profile_seconds)
    for r in rows:
        r.update(prof[r["key"]])
    timings = []
    for rep in range(a.repeats):
        log.info("timing %d/%d (%d models interleaved, load %s)", rep + 1, a.repeats, len(rows), loadavg())
        timings.append(time_onnx({r["key"]: r["path"] for r in rows}, shape, a.batches, a.threads,
                                 min_seconds=a.min_seconds, seed=rep))
    for r in rows:
        r["timing"] = {str(b): _ratios(timings, r["key"], b) for b in a.batches}
        r["path"] = str(Path(r["path"]).name)
    return {"model": a.run or a.model, "input_shape": list(shape), "rows": rows, "timings": timings,
            "config": {k: v for k, v in vars(a).items() if k not in ("json", "md")},
            "argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M"), "nchwc_block": _block()}


def _block() -> int:
    from quadexport.compress.plan import nchwc_block

    return nchwc_block()


def _ratios(timings: list[dict[str, Any]], key: str, batch: int) -> dict[str, list[float]]:
    """Per timing run: p50 ms, wall-clock and CPU-time p50 ratio to the twin."""
    out: dict[str, list[float]] = {"p50_ms": [], "wall": [], "cpu": []}
    for t in timings:
        row = {r["model"]: r for r in t["rows"] if r["batch"] == batch}
        out["p50_ms"].append(row[key]["p50_ms"])
        out["wall"].append(row[key]["p50_ms"] / row["twin"]["p50_ms"])
        out["cpu"].append(row[key]["cpu_p50_ms"] / row["twin"]["cpu_p50_ms"])
    return out


# -- report ---------------------------------------------------------------------------------------------------------

def _delta(a: dict[str, float], b: dict[str, float], fmt: str = "{:+d}", skip: tuple[str, ...] = ()) -> str:
    keys = sorted(set(a) | set(b))
    parts = []
    for k in keys:
        d = a.get(k, 0) - b.get(k, 0)
        if k not in skip and round(d) != 0:
            parts.append(f"{fmt.format(int(round(d)))} {k}")
    return ", ".join(parts) or "–"


def _cell(vals: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in vals)


def render(res: dict[str, Any]) -> str:
    rows = res["rows"]
    twin = next(r for r in rows if r["key"] == "twin")
    bs = list(twin["timing"])
    lines = ["| variant | MACs × | ONNX nodes | ORT nodes | ORT graph vs twin | "
             + " | ".join(f"b={b} × twin" for b in bs) + " | " + " | ".join(f"b={b} × (CPU)" for b in bs) + " |",
             "|---|--:|--:|--:|---|" + "--:|" * (2 * len(bs))]
    for r in rows:
        lines.append(f"| {r['key']} | {r['macs_ratio']:.3f} | {r['onnx_nodes']} | {r['ort_nodes']} | "
                     f"{_delta(r['ort_ops'], twin['ort_ops']) if r is not twin else '–'} | "
                     + " | ".join(_cell(r["timing"][b]["wall"]) for b in bs) + " | "
                     + " | ".join(_cell(r["timing"][b]["cpu"]) for b in bs) + " |")
    lines += ["", "Profiler (median µs per run, interleaved; Δ vs twin by op family; overhead = run − kernels):",
              "", "| variant | " + " | ".join(f"b={b}: run µs (Δ) | b={b}: Δ µs" for b in bs) + " |",
              "|---|" + "--:|---|" * len(bs)]
    for r in rows:
        cells = []
        for b in bs:
            p, t = families(r["profile"][b]), families(twin["profile"][b])
            cells.append(f"{p['run']:.0f} ({p['run'] - t['run']:+.0f})")
            cells.append(_delta(p, t, skip=("run", "kernels")) if r is not twin else "–")
        lines.append(f"| {r['key']} | " + " | ".join(cells) + " |")
    tw = {b: twin["timing"][b]["p50_ms"] for b in bs}
    loads = [(t.get("load_before"), t.get("load_after")) for t in res["timings"]]
    lines += ["", f"Twin p50: {', '.join(f'b={b} {_cell(v)} ms' for b, v in tw.items())}; timing runs: "
              f"{len(res['timings'])} (cells: one value per run); load average before/after each: {loads}; "
              f"NCHWc block {res['nchwc_block']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet20", help="zoo model (Fan form) when no --run is given")
    p.add_argument("--run", help="a trained run dir to take the model and weights from")
    p.add_argument("--layers", nargs="+", default=["layer3.0.conv1", "layer1.0.conv1"])
    p.add_argument("--ks", nargs="+", type=int, default=[8, 16], help="quadratic channels of the mixed variants")
    p.add_argument("--all-k", type=int, default=8, help="k of the all-layers variants (0: none)")
    p.add_argument("--bias-bn", action="store_true", help="add the …-g-bn variants (gate-only bias Add as BN)")
    p.add_argument("--include", nargs="*", default=[],
                   help="only variants whose name contains one of these (and the twin and linear references)")
    p.add_argument("--exclude", nargs="*", default=[], help="skip variants whose name contains one of these")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds per model and batch")
    p.add_argument("--repeats", type=int, default=2, help="interleaved timing runs")
    p.add_argument("--profile-seconds", type=float, default=0.5, help="profiled seconds per model and batch")
    p.add_argument("--shortcut", choices=("auto", "conv"), default="auto",
                   help="conv: option-A shortcuts as 1x1 convs in every variant, the twin included")
    p.add_argument("--opset", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rel", type=float, default=0.1,
                   help="perturbation of the ReLinear-initialised g/b weights, relative to std(W_r)")
    p.add_argument("--calib", type=int, default=128, help="random inputs for the channel scores (refits)")
    p.add_argument("--onnx-dir", help="keep the ONNX files here (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="smoke run: 0.2 s timing, one run, short profiles")
    a = p.parse_args(argv)
    if a.quick:
        a.min_seconds, a.repeats, a.profile_seconds = 0.2, 1, 0.1
    if a.min_seconds < 1 and not a.quick:
        p.error("--min-seconds must be >= 1 on this loaded machine (use --quick for a smoke run)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxscript", "quadexport"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="compress-overhead-") as tmp:
        out = Path(a.onnx_dir) if a.onnx_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        res = measure(a, out)
    md = render(res)
    print(md)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({**res, "config": {**res["config"], "json": str(a.json)}}, indent=1))
        log.info("wrote %s", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
