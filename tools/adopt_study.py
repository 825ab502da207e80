"""The measured table of docs/adopt.md: every research-code form through ``quadexport.adopt``, and the onnxruntime
latency of the inline QResNet20 as the user would export it vs adopted (decomposed and fused), interleaved.

    python tools/adopt_study.py --out docs/adopt/study.json        # markdown tables on stdout

Models: the project's own modules in each research style (tests/adopt_models.py), at the ReLinear init with every
weight perturbed (``adopt_models.randomize``: gates no longer 1, power terms no longer 0, BN statistics from N(0, 1)
inputs) - random weights far from that init overflow through depth. For each form: how many neurons were adopted
(and why the rest were not), exactness (max |adopted - source| / max |source| on N(0, 1) inputs, in torch), parity
of the adopted fused export under onnxruntime (same measure, kernel library if built) and the BatchNormalization /
Pow nodes of the user's naive export vs the adopted decomposed one. Latency: three files of QResNet20 at batch 1
and 64, each session one intra-op thread with ``session.intra_op.allow_spinning = "0"``, timed round-robin by
``quadexport.bench.timing.time_sessions``:

* naive: ``torch.onnx.export`` of the user's own module (dynamo exporter, opset 20, dynamic batch), as it is;
* adopted decomposed: ``quadexport.export(adopted, mode="decomposed")`` (BN folded, squares as Mul);
* adopted fused: ``quadexport.export(adopted, mode="fused")`` (one custom-domain node per neuron).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import adopt_models  # noqa: E402  (tests/adopt_models.py: the research-style modules)

import quadexport as q  # noqa: E402
from quadexport.bench.timing import TimingConfig, TimingUnit, loadavg, time_sessions  # noqa: E402
from quadexport.errors import QuadexportError  # noqa: E402
from quadexport.exporter.session import make_session  # noqa: E402

FORMS = [
    ("qresnet20", "inline QResNet20: `conv1r(x) * conv1g(x) + conv1b(x.pow(2))`, BN after the sum", (3, 32, 32)),
    ("quadralib_net", "QuadraLib: `torch.mul(bn1(conv1(x)), bn2(conv2(x))) + bn3(conv3(x))`", None),
    ("compact_net", "compact: `conv_r(x) + conv_b(x.pow(2))` (grouped, dilated)", None),
    ("t2_net", "T2: `conv(x * x)`, `conv(torch.square(x))`", None),
    ("t4_net", "T4: `torch.mul(conv1(x), conv2(x))`", None),
    ("qres_net", "QRes: `a * conv2(x) + a`", None),
    ("fan_mlp", "Linear MLP: `fc1r(x) * fc1g(x) + fc1b(x ** 2)`", None),
    ("fan_net1d", "Conv1d fan (stride, dilation, groups)", None),
    ("relu_factor_net", "relu inside a factor: `relu(conv1(x)) * conv2(x) + conv3(x * x)`", None),
    ("partial_net", "partial: one quadratic layer among plain ones", None),
]
"""(builder in tests/adopt_models.py, what its forward writes, input shape or None for its INPUT_SHAPES entry)."""


def _quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def naive_export(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """What ``torch.onnx.export`` writes for the user's own module (dynamo, opset 20, dynamic batch)."""
    x = torch.randn((2, *shape))
    with _quiet():
        prog = torch.onnx.export(model.eval(), (x,), dynamo=True, opset_version=20, input_names=["input"],
                                 output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    onnx.save(prog.model_proto, str(path))
    return path


def op_counts(path: Path) -> Counter:
    """Node types of a file, functions' bodies not counted (a fused node counts once, under its own op)."""
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def custom_nodes(path: Path) -> int:
    return sum(1 for n in onnx.load(str(path)).graph.node if n.domain not in ("", "ai.onnx"))


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def _run(sess, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def form_row(name: str, what: str, shape: tuple[int, ...] | None, work: Path) -> dict:
    """One form: adopt it, check it in torch and as a fused file under onnxruntime, count BN/Pow nodes."""
    shape = tuple(shape or adopt_models.INPUT_SHAPES[name])
    model = adopt_models.build(name, input_shape=shape)
    gm, rep = q.adopt(model, input_shape=shape, return_report=True)
    x = torch.randn((8, *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(x).numpy(), gm(x).numpy()
    row = {"form": name, "what": what, "input_shape": list(shape),
           "adopted": dict(Counter(n.type for n in rep.neurons)),
           "skipped": [f"{', '.join(s.modules)}: {s.reason}" for s in rep.skipped],
           "torch_rel_err": rel_err(out, ref), "report_max_rel_diff": rep.max_rel_diff,
           "macs": [rep.macs_before, rep.macs_after], "params": [rep.params_before, rep.params_after]}
    naive = naive_export(model, shape, work / f"{name}-naive.onnx")
    row["naive_ops"] = {k: op_counts(naive)[k] for k in ("BatchNormalization", "Pow")}
    if rep.neurons:
        dec = q.export(gm, work / f"{name}-decomposed.onnx", mode="decomposed", input_shape=shape)
        row["decomposed_ops"] = {k: op_counts(dec)[k] for k in ("BatchNormalization", "Pow")}
        fused = q.export(gm, work / f"{name}-fused.onnx", mode="fused", input_shape=shape)
        sess = make_session(fused, threads=1)
        row["fused_custom_nodes"] = custom_nodes(fused)
        row["fused_kernel"] = sess.quadexport_kernel is not None
        row["fused_rel_err"] = rel_err(_run(sess, x.numpy()), ref)
    else:
        try:
            q.export(gm, work / f"{name}-fused.onnx", mode="fused", input_shape=shape)
            row["fused_refusal"] = None
        except QuadexportError as e:
            row["fused_refusal"] = str(e)
    return row


def latency(work: Path, batches: list[int], min_seconds: float, repeats: int) -> dict:
    """p50 latency of the naive, adopted decomposed and adopted fused QResNet20 files, interleaved per batch,
    ``repeats`` independent interleaved timings each (a ratio is taken within one timing)."""
    shape = (3, 32, 32)
    model = adopt_models.build("qresnet20", input_shape=shape)
    gm = q.adopt(model, input_shape=shape)
    files = {"naive": naive_export(model, shape, work / "lat-naive.onnx"),
             "decomposed": q.export(gm, work / "lat-decomposed.onnx", mode="decomposed", input_shape=shape),
             "fused": q.export(gm, work / "lat-fused.onnx", mode="fused", input_shape=shape)}
    sessions = {k: make_session(p, threads=1, allow_spinning=False) for k, p in files.items()}
    out: dict = {"files": {k: {"nodes": sum(op_counts(p).values()), "BatchNormalization":
                               op_counts(p)["BatchNormalization"], "Pow": op_counts(p)["Pow"],
                               "custom": custom_nodes(p)} for k, p in files.items()},
                 "kernel": sessions["fused"].quadexport_kernel is not None, "batches": {}}
    for b in batches:
        x = torch.randn((b, *shape), generator=torch.Generator().manual_seed(b)).numpy()
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        errs = {k: rel_err(_run(s, x), ref) for k, s in sessions.items()}
        units = [TimingUnit(k, (lambda s=s: _run(s, x)), lambda o: bool(np.isfinite(o).all()))
                 for k, s in sessions.items()]
        reps = [time_sessions(units, TimingConfig(warmup=3, min_iters=20 if b == 1 else 10,
                                                  min_seconds=min_seconds, batch=b)) for _ in range(repeats)]
        out["batches"][str(b)] = {
            k: {"p50_ms": [st[k].p50_ms for st in reps], "spread": [st[k].spread for st in reps],
                "runs": [st[k].runs for st in reps], "rel_err": errs[k],
                "ratio": [st[k].p50_ms / st["naive"].p50_ms for st in reps]} for k in sessions}
    return out


def _fmt_types(d: dict) -> str:
    return ", ".join(f"{n} {t}" for t, n in sorted(d.items())) or "none"


def markdown(res: dict) -> str:
    lines = ["| form | adopted | left alone | exact in torch (max rel err) | fused file under onnxruntime | "
             "BN / Pow nodes: naive → adopted decomposed |", "|---|---|---|---|---|---|"]
    for r in res["forms"]:
        left = "; ".join(r["skipped"]) or "–"
        if r["adopted"]:
            how = ("kernel" if r["fused_kernel"] else "function bodies") if r["fused_custom_nodes"] else \
                "no fused form for this type: standard ops"
            fused = f"{r['fused_custom_nodes']} custom nodes, max rel err {r['fused_rel_err']:.1e} ({how})"
            ops = (f"{r['naive_ops']['BatchNormalization']} / {r['naive_ops']['Pow']} → "
                   f"{r['decomposed_ops']['BatchNormalization']} / {r['decomposed_ops']['Pow']}")
        else:
            fused = f"refused: {r['fused_refusal']}" if r.get("fused_refusal") else "written (no refusal)"
            ops = f"{r['naive_ops']['BatchNormalization']} / {r['naive_ops']['Pow']} → (not exported)"
        lines.append(f"| {r['form']}: {r['what']} | {_fmt_types(r['adopted'])} | {left} | "
                     f"{r['torch_rel_err']:.1e} | {fused} | {ops} |")
    lat = res["latency"]
    lines += ["", "| QResNet20 3×32×32 file | nodes | BatchNormalization | Pow | custom-domain | "
              + " | ".join(f"batch {b}: p50, × naive (min–max over timings)" for b in lat["batches"]) + " |",
              "|---|---|---|---|---|" + "---|" * len(lat["batches"])]
    for k, label in (("naive", "naive `torch.onnx.export` of the user's module"),
                     ("decomposed", "adopted, decomposed"), ("fused", "adopted, fused")):
        f = lat["files"][k]
        cells = []
        for b, rows in lat["batches"].items():
            r = rows[k]["ratio"]
            cells.append(f"{statistics.median(rows[k]['p50_ms']):.2f} ms, {statistics.median(r):.2f}× "
                         f"({min(r):.2f}–{max(r):.2f})")
        lines.append(f"| {label} | {f['nodes']} | {f['BatchNormalization']} | {f['Pow']} | {f['custom']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write the measurements as JSON here")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="latency batch sizes")
    p.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per file and batch")
    p.add_argument("--repeat", type=int, default=3, help="independent interleaved timings per batch")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        forms = [form_row(n, w, s, work) for n, w, s in FORMS]
        lat = latency(work, a.batch, a.min_seconds, a.repeat)
    res = {"command": "python tools/adopt_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                       "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                       "loadavg_after": loadavg()},
           "forms": forms, "latency": lat}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
