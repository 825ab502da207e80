"""Issue #5 study: how close does each compression technique bring a ReLinear-trained QResNet20 (Fashion-MNIST) to
ResNet20's onnxruntime latency, at what accuracy cost.

Steps (each resumable; outputs under ``reports/compression``)::

    # 1. baselines and cheap-neuron QResNet20s, trained with the recipe of the main runs
    #    (models/qresnet20-fashion-mnist.toml: 10k-image subset, 8 epochs, lr 0.1, batch 128, ReLinear sg 1e-2)
    python tools/compression_study.py train resnet8-relu resnet14-relu resnet32-relu resnet20-fan_pw resnet20-fan_dw
    # 2. compression variants of reports/qresnet20-fashion-mnist/runs/resnet20-fan
    python tools/compression_study.py compress
    # 3. one interleaved onnxruntime timing of every model (batch 1 and 64), when the machine is quiet
    python tools/compression_study.py bench
    # 4. table + Pareto plot (docs/compression.md, docs/img/compression*.png)
    python tools/compression_study.py report

Run dirs of the main recipe (trained by ``quadexport pipeline models/qresnet20-fashion-mnist.toml``) are read from
``reports/qresnet20-fashion-mnist/runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "models" / "qresnet20-fashion-mnist.toml"
MAIN_RUNS = ROOT / "reports" / "qresnet20-fashion-mnist" / "runs"
OUT = ROOT / "reports" / "compression"
RUNS = OUT / "runs"
SOURCE = MAIN_RUNS / "resnet20-fan"


def run_path(key: str) -> Path:
    """Run dir of ``<model>-<neuron>``: the main recipe's runs first, then this study's."""
    p = MAIN_RUNS / key
    return p if (p / "checkpoint.pt").exists() else RUNS / key


def cmd_train(a: argparse.Namespace) -> int:
    import torch

    from quadexport.layers import cheap  # noqa: F401
    from quadexport.pipeline import load_recipe, train_config
    from quadexport.checkpoint import read_checkpoint
    from quadexport.train import train

    torch.set_num_threads(a.threads)
    recipe = load_recipe(RECIPE)
    for key in a.models:
        model, neuron = key.split("-", 1)
        out = RUNS / key
        cfg = train_config(recipe, model, neuron, out)
        if (out / "checkpoint.pt").exists():
            ck = read_checkpoint(out)
            if ck["epoch"] >= cfg.epochs:
                print(f"== {key}: done ({100 * ck['meta']['test_acc']:.2f}%)", flush=True)
                continue
            print(f"== {key}: resume from epoch {ck['epoch']}", flush=True)
            train(cfg, resume=True, progress=False)
        else:
            print(f"== train {key}: {cfg.to_dict()}", flush=True)
            t0 = time.time()
            train(cfg, progress=False)
            print(f"== {key}: {time.time() - t0:.0f} s", flush=True)
    return 0


# (name, options of quadexport.compress.compress)
VARIANTS = {
    "prune-t0.02": {"threshold": 0.02},
    "prune-t0.05": {"threshold": 0.05},
    "prune-t0.1": {"threshold": 0.1},
    "prune-t0.2": {"threshold": 0.2},
    "prune-all": {"threshold": 1e9},
    "prune-r1.5": {"target_ratio": 1.5},
    "prune-r1.5-ft2": {"target_ratio": 1.5, "finetune_epochs": 2},
    "int8": {"quantize": "int8"},
    "int8-products": {"quantize": "int8", "keep_fp32": "products"},
    "int8-quadratic": {"quantize": "int8", "keep_fp32": "quadratic"},
    "prune-r1.5-int8": {"target_ratio": 1.5, "quantize": "int8"},
}


def cmd_compress(a: argparse.Namespace) -> int:
    import torch

    from quadexport.compress import compress

    torch.set_num_threads(a.threads)
    names = a.variants or list(VARIANTS)
    for name in names:
        out = OUT / "compressed" / name
        if (out / "compress_report.json").exists() and not a.redo:
            print(f"== {name}: done", flush=True)
            continue
        opts = dict(VARIANTS[name])
        src = Path(opts.pop("source", SOURCE))
        print(f"== compress {name}: {opts}", flush=True)
        compress(src, out, bench=False, overwrite=True, twin=run_path("resnet20-relu") if
                 (run_path("resnet20-relu") / "checkpoint.pt").exists() else None, **opts)
    return 0


def _entries() -> list[dict]:
    """Every model of the study: label, kind, ONNX path (exported on demand), accuracy, MACs."""
    from quadexport.checkpoint import load
    from quadexport.zoo import count_macs

    entries = []
    for key in ("resnet8-relu", "resnet14-relu", "resnet20-relu", "resnet32-relu", "resnet56-relu", "resnet20-fan",
                "resnet20-fan_pw", "resnet20-fan_dw"):
        p = run_path(key)
        if (p / "checkpoint.pt").exists():
            m = load(p)
            entries.append({"label": key, "kind": "relu" if key.endswith("relu") else
                            ("quadratic" if key == "resnet20-fan" else "cheap neuron"), "run": str(p),
                            "test_acc": m.quadexport_meta["test_acc"],
                            "macs": count_macs(m, tuple(m.quadexport_meta["input_shape"]))})
    for name in VARIANTS:
        p = OUT / "compressed" / name
        if not (p / "compress_report.json").exists():
            continue
        r = json.loads((p / "compress_report.json").read_text())
        entries.append({"label": f"fan {name}", "kind": "pruned", "run": str(p), "onnx": str(p / "model.onnx"),
                        "test_acc": r["accuracy"]["final"], "macs": r["macs"]["compressed"],
                        "report": r})
        if r.get("int8"):
            entries.append({"label": f"fan {name} (int8 model)", "kind": "int8", "run": str(p),
                            "onnx": str(p / r["int8"]["path"]), "test_acc": r["int8"]["test_acc"],
                            "macs": r["macs"]["compressed"], "report": r})
    return entries


def cmd_bench(a: argparse.Namespace) -> int:
    from quadexport.checkpoint import load
    from quadexport.compress.timing import time_onnx
    from quadexport.export import export

    entries = _entries()
    files = {}
    odir = OUT / "onnx"
    for e in entries:
        if "onnx" not in e:
            path = odir / f"{e['label']}.onnx"
            if not path.exists() or a.reexport:
                m = load(e["run"])
                export(m, path, input_shape=tuple(m.quadexport_meta["input_shape"]))
            e["onnx"] = str(path)
        if e["kind"] == "pruned" and e["report"].get("int8") and e["label"].endswith("int8"):
            pass
        files[e["label"]] = e["onnx"]
    # pruned variants whose int8 model is the subject: the fp32 twin row is the same model as another variant's
    print(f"== timing {len(files)} models, batches {a.batches}, threads {a.threads}; load {os.getloadavg()}",
          flush=True)
    t = time_onnx(files, (1, 28, 28), a.batches, a.threads, min_seconds=a.min_seconds, chunk_seconds=0.05)
    t["entries"] = [{k: v for k, v in e.items() if k != "report"} for e in entries]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"timing-t{a.threads}.json").write_text(json.dumps(t, indent=2))
    for r in t["rows"]:
        print(f"{r['model']:40s} b={r['batch']:3d} p50 {r['p50_ms']:8.3f} ms ({r['iters']} runs)")
    print(f"load {t['load_before']} -> {t['load_after']}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = json.loads((OUT / f"timing-t{a.threads}.json").read_text())
    entries = {e["label"]: e for e in t["entries"]}
    lat = {(r["model"], r["batch"]): r["p50_ms"] for r in t["rows"]}
    base = "resnet20-relu"
    fan = entries.get("resnet20-fan")
    rows = []
    for label, e in entries.items():
        row = {"label": label, "kind": e["kind"], "test_acc": e["test_acc"], "macs": e["macs"]}
        for b in t["config"]["batches"]:
            row[f"ms{b}"] = lat.get((label, b))
            row[f"ratio{b}"] = lat[(label, b)] / lat[(base, b)] if (base, b) in lat and (label, b) in lat else None
        row["delta_pp"] = 100 * (e["test_acc"] - fan["test_acc"]) if fan else None
        rows.append(row)
    (OUT / "study.json").write_text(json.dumps({"rows": rows, "timing": t["config"], "load": [t["load_before"],
                                                                                             t["load_after"]]},
                                               indent=2))
    lines = ["| model | test acc | Δ vs QResNet20 (pp) | MACs (M) | " +
             " | ".join(f"b={b} ms (× ResNet20)" for b in t["config"]["batches"]) + " |",
             "|---|---|---|---|" + "---|" * len(t["config"]["batches"])]
    for r in rows:
        lines.append(f"| {r['label']} | {100 * r['test_acc']:.2f}% | {r['delta_pp']:+.2f} | {r['macs'] / 1e6:.1f} | " +
                     " | ".join(f"{r[f'ms{b}']:.3f} ({r[f'ratio{b}']:.2f}×)" for b in t["config"]["batches"]) + " |")
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    colors = {"relu": "C0", "quadratic": "C3", "pruned": "C2", "int8": "C4", "cheap neuron": "C1"}
    markers = {"relu": "o", "quadratic": "s", "pruned": "^", "int8": "v", "cheap neuron": "D"}
    fig, axes = plt.subplots(1, len(t["config"]["batches"]), figsize=(6.5 * len(t["config"]["batches"]), 5))
    for ax, b in zip(axes if hasattr(axes, "__len__") else [axes], t["config"]["batches"]):
        seen = set()
        for r in rows:
            if r[f"ratio{b}"] is None:
                continue
            ax.scatter(r[f"ratio{b}"], 100 * r["test_acc"], c=colors[r["kind"]], marker=markers[r["kind"]],
                       label=None if r["kind"] in seen else r["kind"], s=45, zorder=3)
            seen.add(r["kind"])
            ax.annotate(r["label"].replace("resnet", "R").replace("fan ", ""), (r[f"ratio{b}"], 100 * r["test_acc"]),
                        fontsize=7, xytext=(4, 2), textcoords="offset points")
        relu = sorted((r for r in rows if r["kind"] == "relu" and r[f"ratio{b}"]), key=lambda r: r[f"ratio{b}"])
        ax.plot([r[f"ratio{b}"] for r in relu], [100 * r["test_acc"] for r in relu], c="C0", alpha=0.4)
        ax.axvline(1.5, ls="--", c="grey", lw=0.8)
        if fan:
            ax.axhline(100 * fan["test_acc"] - 0.3, ls=":", c="C3", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("onnxruntime latency / ResNet20 (p50)")
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.set_title(f"batch {b}, {t['config']['threads'] or 'default'} thread(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Accuracy vs latency: ReLU ResNets, QResNet20 and its compressed forms")
    fig.tight_layout()
    fig.savefig(img / "compression_pareto.png", dpi=110)
    print(f"wrote {img / 'compression_pareto.png'}, {OUT / 'table.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("models", nargs="+", help="<model>-<neuron>, e.g. resnet8-relu resnet20-fan_pw")
    t.add_argument("--threads", type=int, default=1)
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("compress")
    c.add_argument("variants", nargs="*", choices=[[]] + list(VARIANTS) if False else None)
    c.add_argument("--redo", action="store_true")
    c.add_argument("--threads", type=int, default=1)
    c.set_defaults(func=cmd_compress)
    b = sub.add_parser("bench")
    b.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--min-seconds", type=float, default=1.0)
    b.add_argument("--reexport", action="store_true")
    b.set_defaults(func=cmd_bench)
    r = sub.add_parser("report")
    r.add_argument("--threads", type=int, default=1)
    r.set_defaults(func=cmd_report)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
