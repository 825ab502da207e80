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

ROOT = Path(__file__).resolve().parents[1]  # the repository: recipe, reports/ and docs/ (quadexport is installed)

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
    from quadexport.runs.checkpoint import read_checkpoint
    from quadexport.training.loop import train

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
    # technique 1: pruning (threshold, no fine-tuning), the MAC-target search, fine-tuning
    "prune-t0.15": {"threshold": 0.15},
    "prune-t0.2": {"threshold": 0.2},
    "prune-r1.5": {"target_ratio": 1.5},
    "prune-t0.2-ft2": {"threshold": 0.2, "finetune_epochs": 2},
    "prune-all-ft2": {"threshold": 1e9, "finetune_epochs": 2, "bn_recalibrate": True},
    # the exact 1x1-conv shortcut rewrite (same weights and accuracy as the variant without it)
    "prune-t0.15-convsc": {"threshold": 0.15, "shortcut": "conv"},
    # technique 3: int8 (original model; pruned model)
    "int8": {"quantize": "int8"},
    "int8-products": {"quantize": "int8", "keep_fp32": "products"},
    "int8-quadratic": {"quantize": "int8", "keep_fp32": "quadratic"},
    # int8 of the fine-tuned pruned model (quantisation-only pass over a compressed run)
    "prune-t0.2-ft2-int8": {"source": "compressed/prune-t0.2-ft2", "quantize": "int8"},
    "prune-t0.2-ft2-int8-products": {"source": "compressed/prune-t0.2-ft2", "quantize": "int8",
                                     "keep_fp32": "products"},
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
        src = OUT / opts.pop("source") if "source" in opts else SOURCE
        print(f"== compress {name}: {opts}", flush=True)
        # the study's variants were measured with the earlier defaults: no fine-tuning, MAC cost, no budget
        opts = {"finetune_epochs": 0, "cost": "macs", "max_drop": None, **opts}
        compress(src, out, bench=False, overwrite=True, twin=run_path("resnet20-relu") if
                 (run_path("resnet20-relu") / "checkpoint.pt").exists() else None, **opts)
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    """Accuracy (no fine-tuning), kept quadratic channels and MAC ratio of the pruned model per threshold."""
    import torch

    from quadexport.runs.checkpoint import load
    from quadexport.compress import channel_scores, collect_stats, compress_model, plan, twin_of
    from quadexport.compress.rundata import open_data
    from quadexport.zoo import count_macs

    torch.set_num_threads(a.threads)
    model = load(a.source)
    meta = model.quadexport_meta
    data = open_data(a.source, meta, a.calib_samples, val_samples=0)
    scores = channel_scores(collect_stats(model, data.calib))
    shape = tuple(meta["input_shape"])
    twin_macs = count_macs(twin_of(model), shape)
    acc0 = data.accuracy(model, "test")
    rows = []
    per_layer = {n: sorted(float(v) for v in sc["lin"].score) for n, sc in scores.items()}
    for t in a.thresholds:
        for align in a.aligns:
            pl = plan(model, scores, t, align)
            cm, _ = compress_model(model, pl, scores)
            acc = data.accuracy(cm, "test")
            row = {"threshold": t, "align": align, "test_acc": acc, "delta_pp": 100 * (acc - acc0),
                   "mac_ratio": count_macs(cm, shape) / twin_macs,
                   "kept": sum(p.k for p in pl.layers.values()), "own": sum(len(p.own) for p in pl.layers.values()),
                   "layers": {n: [p.k, p.g, p.b] for n, p in pl.layers.items()}}
            rows.append(row)
            print(f"t={t:<6g} align={align:<3d} own {row['own']:4d} kept {row['kept']:4d} MACs x{row['mac_ratio']:.2f} "
                  f"acc {100 * acc:.2f}% ({row['delta_pp']:+.2f} pp)", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sweep.json").write_text(json.dumps({"source": str(a.source), "test_acc": acc0, "rows": rows,
                                                "scores": per_layer}, indent=1))
    return 0


def cmd_latsweep(a: argparse.Namespace) -> int:
    """onnxruntime latency of the pruned architectures per threshold × alignment × shortcut form × mixed-layer split
    (trained weights, no fine-tuning), interleaved with the original and the ReLU twin (plain and with 1×1-conv
    shortcuts)."""
    import copy

    import torch

    from quadexport.runs.checkpoint import load
    from quadexport.compress import channel_scores, collect_stats, compress_model, fold_mixed_bn, plan, twin_of
    from quadexport.compress.prune import conv_shortcuts, get_spec
    from quadexport.compress.rundata import open_data
    from quadexport.compress.latency import time_onnx
    from quadexport.exporter import export
    from quadexport.zoo import count_macs

    torch.set_num_threads(a.threads)
    model = load(a.source)
    meta = model.quadexport_meta
    shape = tuple(meta["input_shape"])
    calib = open_data(a.source, meta, a.calib_samples, val_samples=0).calib
    scores = channel_scores(collect_stats(model, calib))
    twin = twin_of(model)
    odir = OUT / "latsweep"
    odir.mkdir(parents=True, exist_ok=True)
    files = {"relu_twin": export(twin, odir / "relu_twin.onnx", input_shape=shape),
             "relu_twin_convsc": export(conv_shortcuts(copy.deepcopy(twin)), odir / "relu_twin_convsc.onnx",
                                        input_shape=shape),
             "original": export(model, odir / "original.onnx", input_shape=shape)}
    info = {}
    twin_macs = count_macs(twin, shape)
    for t in a.thresholds:
        for align in a.aligns:
            for sc in a.shortcuts:
                for split in a.splits:
                    pl = plan(model, scores, t, align)
                    cm, spec = compress_model(model, pl, scores, split, sc)
                    fold_mixed_bn(cm, spec)
                    key = f"t{t:g}-a{align}-{sc}-{split}"
                    files[key] = export(cm, odir / f"{key}.onnx", input_shape=shape)
                    info[key] = {"threshold": t, "align": align, "shortcut": sc, "split": split,
                                 "mac_ratio": count_macs(cm, shape) / twin_macs,
                                 "kept": sum(p.k for p in pl.layers.values()),
                                 "mixed": sum(1 for d in get_spec(cm)["layers"].values() if d["type"] == "mixed")}
                    print(key, info[key], flush=True)
    print(f"== timing {len(files)} models; load {os.getloadavg()}", flush=True)
    tm = time_onnx(files, shape, a.batches, a.threads, min_seconds=a.min_seconds)
    tm["info"] = info
    (OUT / f"latsweep-t{a.threads}.json").write_text(json.dumps(tm, indent=1))
    lat = {(r["model"], r["batch"]): r["p50_ms"] for r in tm["rows"]}
    for k in files:
        print(f"{k:28s} " + "  ".join(f"b={b}: {lat[(k, b)]:8.3f} ms x{lat[(k, b)] / lat[('relu_twin', b)]:.2f} "
                                     f"(x{lat[(k, b)] / lat[('relu_twin_convsc', b)]:.2f} vs convsc twin)"
                                     for b in a.batches) + (f"  MACs x{info[k]['mac_ratio']:.2f}" if k in info else ""))
    print(f"load {tm['load_before']} -> {tm['load_after']}")
    return 0


def cmd_control(a: argparse.Namespace) -> int:
    """Control for fine-tuned variants: the trained ReLU twin fine-tuned with the same schedule (run's LR × 0.1,
    cosine, ``--epochs``), so "pruned + fine-tuned" is compared with "ReLU + the same extra epochs"."""
    import torch

    from quadexport.runs.checkpoint import load, save_checkpoint
    from quadexport.compress.finetune import finetune
    from quadexport.compress.rundata import open_data

    torch.set_num_threads(a.threads)
    src = run_path("resnet20-relu")
    model = load(src)
    meta = dict(model.quadexport_meta)
    data = open_data(src, meta, 1, val_samples=0)
    hist = finetune(model, data.fit, meta["train_config"], a.epochs, workers=data.workers)
    acc = data.accuracy(model, "test")
    out = RUNS / f"resnet20-relu-ft{a.epochs}"
    meta.update(test_acc=acc, finetuned_from=str(src), finetune=hist)
    save_checkpoint(out, model, meta, epoch=8 + a.epochs)
    (out / "metrics.json").write_text(json.dumps({"test_acc": acc, "finetune": hist}, indent=1))
    print(f"ReLU ResNet20 {100 * load(src).quadexport_meta['test_acc']:.2f}% -> +{a.epochs} fine-tuning epochs "
          f"{100 * acc:.2f}%")
    return 0


def _entries() -> list[dict]:
    """Every model of the study: label, kind, run dir or ONNX path, accuracy (None: untrained, latency only), MACs."""
    from quadexport.runs.checkpoint import load
    from quadexport.zoo import count_macs

    entries = []
    for key in ("resnet8-relu", "resnet14-relu", "resnet20-relu", "resnet32-relu", "resnet56-relu",
                "resnet20-relu-ft2", "resnet20-fan", "resnet20-fan_pw", "resnet20-fan_dw"):
        p = run_path(key)
        if not (p / "checkpoint.pt").exists():
            continue
        m = load(p)
        meta = m.quadexport_meta
        if meta.get("epochs_done", 8) < 8 and "finetuned_from" not in meta:
            continue  # unfinished run
        kind = ("relu" if key.endswith("relu") else "relu +2 ep" if "relu-ft" in key else
                "quadratic" if key == "resnet20-fan" else "cheap neuron")
        entries.append({"label": key, "kind": kind, "run": str(p), "test_acc": meta["test_acc"],
                        "macs": count_macs(m, tuple(meta["input_shape"]))})
    have = {e["label"] for e in entries}
    for key in ("resnet20-fan_pw", "resnet20-fan_dw"):  # architecture latency even when not trained
        if key not in have:
            entries.append({"label": f"{key} (untrained)", "kind": "cheap neuron (untrained)", "zoo": key,
                            "test_acc": None, "macs": None})
    for name, opts in VARIANTS.items():
        p = OUT / "compressed" / name
        if not (p / "compress_report.json").exists():
            continue
        r = json.loads((p / "compress_report.json").read_text())
        if not opts.get("quantize"):
            entries.append({"label": name, "kind": "pruned" if "finetune_epochs" not in opts else "pruned + ft",
                            "run": str(p), "onnx": str(p / "model.onnx"), "test_acc": r["accuracy"]["final"],
                            "macs": r["macs"]["compressed"], "report": r})
        if r.get("int8"):
            entries.append({"label": name, "kind": "int8", "run": str(p),
                            "onnx": str(p / r["int8"]["path"]), "test_acc": r["int8"]["test_acc"],
                            "macs": r["macs"]["compressed"], "report": r})
    return entries


def cmd_bench(a: argparse.Namespace) -> int:
    from quadexport.runs.checkpoint import load
    from quadexport.compress.latency import time_onnx
    from quadexport.exporter import export

    entries = _entries()
    files = {}
    odir = OUT / "onnx"
    for e in entries:
        zoo_model = None
        if "zoo" in e:  # untrained architecture: ReLinear init + the bench's small perturbation
            import torch

            import quadexport.compress  # noqa: F401  (fan_pw / fan_dw)
            from quadexport.bench import PERTURB_STD, _perturb
            from quadexport.zoo import count_macs
            from quadexport.transforms import create_model

            name, neuron = e["zoo"].split("-", 1)
            torch.manual_seed(0)
            zoo_model = create_model(name, neuron, in_channels=1, input_size=28).eval()
            _perturb(zoo_model, PERTURB_STD, torch.Generator().manual_seed(0))
            if e.get("macs") is None:
                e["macs"] = count_macs(zoo_model, (1, 28, 28))
        if "onnx" not in e:
            path = odir / f"{e['label']}.onnx"
            if not path.exists() or a.reexport:
                if zoo_model is not None:
                    export(zoo_model, path, input_shape=(1, 28, 28))
                else:
                    m = load(e["run"])
                    export(m, path, input_shape=tuple(m.quadexport_meta["input_shape"]))
            e["onnx"] = str(path)
        key = e["label"] + (" [int8]" if e["kind"] == "int8" else "")
        e["key"] = key
        files[key] = e["onnx"]
    relu = next((e for e in entries if e["label"] == "resnet20-relu"), None)
    if relu is not None:  # the exact 1x1-conv shortcut rewrite applied to the trained ReLU twin
        from quadexport.compress.prune import conv_shortcuts
        from quadexport.compress.quant import compare_int8, quantize_int8
        from quadexport.compress.rundata import open_data
        from quadexport.zoo import count_macs

        relu_model = load(relu["run"])
        meta = relu_model.quadexport_meta
        convsc = conv_shortcuts(relu_model)
        path = odir / "resnet20-relu-convsc.onnx"
        if not path.exists() or a.reexport:
            export(convsc, path, input_shape=(1, 28, 28))
        key = "resnet20-relu [1x1-conv shortcuts]"
        files[key] = str(path)
        entries.append({"label": key, "key": key, "kind": "relu", "test_acc": relu["test_acc"],
                        "macs": count_macs(convsc, tuple(meta["input_shape"])), "onnx": str(path)})
        # like-for-like for the int8 rows: the ReLU twin quantised the same way (static QDQ, same calibration)
        q8 = odir / "resnet20-relu-int8.onnx"
        data = open_data(relu["run"], meta, 1024, val_samples=0)
        if not q8.exists() or a.reexport:
            quantize_int8(relu["onnx"], q8, data.calib.numpy())
        key = "resnet20-relu [int8]"
        files[key] = str(q8)
        entries.append({"label": "resnet20-relu", "key": key, "kind": "relu int8",
                        "test_acc": compare_int8(q8, relu["onnx"], data.batches("test"))["test_acc"],
                        "macs": relu["macs"], "onnx": str(q8)})
    print(f"== timing {len(files)} models, batches {a.batches}, threads {a.threads}; load {os.getloadavg()}",
          flush=True)
    t = time_onnx(files, (1, 28, 28), a.batches, a.threads, min_seconds=a.min_seconds)
    t["entries"] = [{k: v for k, v in e.items() if k != "report"} for e in entries]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"timing-t{a.threads}.json").write_text(json.dumps(t, indent=2))
    for r in t["rows"]:
        print(f"{r['model']:40s} b={r['batch']:3d} p50 {r['p50_ms']:8.3f} ms ({r['runs']} runs)")
    print(f"load {t['load_before']} -> {t['load_after']}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    """Table (reports/compression/table.md, study.json) and the Pareto plot (docs/img/compression_pareto.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [Path(f) for f in a.timings] if a.timings else [OUT / f"timing-t{a.threads}.json"]
    runs = [json.loads(f.read_text()) for f in files]
    t = runs[0]
    lat = {(r["model"], r["batch"]): r for r in t["rows"]}
    others = [{(r["model"], r["batch"]): r for r in u["rows"]} for u in runs[1:]]
    batches = t["config"]["batches"]
    base = "resnet20-relu"
    ents = t["entries"]
    fan = next((e for e in ents if e["label"] == "resnet20-fan"), None)
    rows = []
    for e in ents:
        k = e["key"]
        row = {"label": k, "kind": e["kind"], "test_acc": e["test_acc"], "macs": e["macs"]}
        for b in batches:
            if (k, b) in lat and (base, b) in lat:
                row[f"ms{b}"] = lat[(k, b)]["p50_ms"]
                row[f"ratio{b}"] = lat[(k, b)]["p50_ms"] / lat[(base, b)]["p50_ms"]
                row[f"ratio_min{b}"] = lat[(k, b)]["min_ms"] / lat[(base, b)]["min_ms"]
                row[f"ratio_runs{b}"] = [row[f"ratio{b}"]] + [o[(k, b)]["p50_ms"] / o[(base, b)]["p50_ms"]
                                                              for o in others if (k, b) in o and (base, b) in o]
        row["delta_pp"] = 100 * (e["test_acc"] - fan["test_acc"]) if fan and e["test_acc"] is not None else None
        rows.append(row)
    seed1 = RUNS / "resnet20-relu-seed1" / "metrics.json"
    relu = next((r for r in rows if r["label"] == base), None)
    if seed1.exists() and relu is not None:  # seed noise: same graph as resnet20-relu, so the same latency
        acc1 = json.loads(seed1.read_text())["test_acc"]
        rows.append({**relu, "label": "resnet20-relu (seed 1; same graph)", "kind": "relu, seed 1",
                     "test_acc": acc1, "delta_pp": 100 * (acc1 - fan["test_acc"]) if fan else None})
    (OUT / "study.json").write_text(json.dumps({"rows": rows, "timing": t["config"],
                                                "load": [t["load_before"], t["load_after"]]}, indent=2))
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    runs_hdr = " / ".join(f"run {i + 1}" for i in range(len(runs)))
    lines = ["| model | kind | test acc | Δ vs QResNet20 | MACs | " +
             " | ".join(f"b={b}: ms | b={b}: × ResNet20 ({runs_hdr})" for b in batches) + " |",
             "|---|---|--:|--:|--:|" + "--:|--:|" * len(batches)]
    for r in rows:
        acc = "–" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%"
        d = "–" if r["delta_pp"] is None else f"{r['delta_pp']:+.2f} pp"
        cells = []
        for b in batches:
            if f"ms{b}" in r:
                cells += [f"{r[f'ms{b}']:.3f}", " / ".join(f"{v:.2f}" for v in r[f"ratio_runs{b}"])]
            else:
                cells += ["–", "–"]
        lines.append(f"| {r['label']} | {r['kind']} | {acc} | {d} | {fmt(r['macs'] and r['macs'] / 1e6, '.1f')}M | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"onnxruntime {t['config'].get('ort', '')} CPU, {t['config']['threads'] or 'default'} intra-op "
                 f"thread(s), p50 of interleaved runs (≥{t['config']['min_seconds']} s per model and batch); ms: "
                 f"run 1; load average {t['load_before']} → {t['load_after']}"
                 + "".join(f"; run {i + 2}: {u['load_before']} → {u['load_after']}" for i, u in enumerate(runs[1:]))
                 + ".")
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    img = ROOT / "docs" / "img"
    img.mkdir(parents=True, exist_ok=True)
    style = {"relu": ("C0", "o"), "relu +2 ep": ("C0", "P"), "quadratic": ("C3", "s"), "pruned": ("C2", "^"),
             "pruned + ft": ("C2", "*"), "int8": ("C4", "v"), "relu int8": ("C0", "v"), "relu, seed 1": ("C0", "x"),
             "cheap neuron": ("C1", "D")}
    fig, axes = plt.subplots(1, len(batches), figsize=(6.8 * len(batches), 5.2))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    labelled = {"resnet8-relu", "resnet14-relu", "resnet20-relu", "resnet32-relu", "resnet56-relu", "resnet20-fan",
                "resnet20-fan_pw", "resnet20-fan_dw", "prune-t0.15", "prune-r1.5", "prune-t0.2-ft2", "int8 [int8]",
                "prune-t0.2-ft2-int8 [int8]", "resnet20-relu [int8]", "resnet20-relu (seed 1; same graph)"}
    accs = [100 * r["test_acc"] for r in rows if r["test_acc"] is not None]
    ylo = max(min(accs), (100 * fan["test_acc"] if fan else max(accs)) - 2.5) - 0.3
    for ax, b in zip(axes, batches):
        seen = set()
        for r in rows:
            if r.get(f"ratio{b}") is None or r["test_acc"] is None or r["kind"] not in style:
                continue
            c, mk = style[r["kind"]]
            x, y = r[f"ratio{b}"], 100 * r["test_acc"]
            name = r["label"].replace("resnet", "R").replace(" (seed 1; same graph)", " seed 1")
            if y < ylo:  # off the chart (an untrained-looking baseline): marker on the floor, value in the label
                y, name = ylo + 0.05, f"{name} ({100 * r['test_acc']:.1f}% ↓)"
            ax.scatter(x, y, c=c, marker=mk, s=50, zorder=3, label=None if r["kind"] in seen else r["kind"])
            seen.add(r["kind"])
            if r["label"] in labelled:
                ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_ylim(ylo, max(accs) + 0.3)
        relu = sorted((r for r in rows if r["kind"] == "relu" and r.get(f"ratio{b}") and "[" not in r["label"]),
                      key=lambda r: r[f"ratio{b}"])
        ax.plot([r[f"ratio{b}"] for r in relu], [max(100 * r["test_acc"], ylo + 0.05) for r in relu], c="C0",
                alpha=0.4)
        ax.axvline(1.5, ls="--", c="grey", lw=0.8)
        if fan:
            ax.axhline(100 * fan["test_acc"] - 0.3, ls=":", c="C3", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("onnxruntime latency / ResNet20 (p50, interleaved)")
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.set_title(f"batch {b}, {t['config']['threads'] or 'default'} thread(s)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.suptitle("Accuracy vs latency: ReLU ResNets vs QResNet20 and its compressed forms "
                 "(dashed: 1.5× ResNet20; dotted: QResNet20 − 0.3 pp)", fontsize=10)
    fig.tight_layout()
    fig.savefig(img / "compression_pareto.png", dpi=110)
    plt.close(fig)
    sweep = OUT / "sweep.json"
    lats = sorted(OUT.glob("latsweep-t*.json"))
    if sweep.exists():
        sw = json.loads(sweep.read_text())
        fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
        names = list(sw["scores"])
        ax[0].boxplot([sw["scores"][n] for n in names], showfliers=True)
        ax[0].set_xticks(range(1, len(names) + 1), [n.replace("layer", "L").replace(".conv", ".c") for n in names],
                         rotation=70, fontsize=7)
        ax[0].set_ylabel("channel score (linear-refit residual / std)")
        ax[0].set_title("quadratic contribution per output channel (QResNet20, ReLinear)")
        ax[0].grid(alpha=0.3)
        rs = [r for r in sw["rows"] if r["threshold"] < 1e8]
        ax[1].plot([r["threshold"] for r in rs], [r["mac_ratio"] for r in rs], "o-", label="MACs / ResNet20")
        ax2 = ax[1].twinx()
        ax2.plot([r["threshold"] for r in rs], [r["delta_pp"] for r in rs], "s-", c="C3", label="Δ accuracy (pp)")
        ax2.set_ylabel("Δ test accuracy vs QResNet20 (pp), no fine-tuning", color="C3")
        ax[1].set_xlabel("threshold")
        ax[1].set_ylabel("MACs / ResNet20")
        ax[1].grid(alpha=0.3)
        ax[1].set_title("pruning without fine-tuning (align 16)")
        fig.tight_layout()
        fig.savefig(img / "compression_scores.png", dpi=110)
        plt.close(fig)
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
    c.add_argument("variants", nargs="*", help=f"default: all of {', '.join(VARIANTS)}")
    c.add_argument("--redo", action="store_true")
    c.add_argument("--threads", type=int, default=1)
    c.set_defaults(func=cmd_compress)
    w = sub.add_parser("sweep")
    w.add_argument("--source", default=str(SOURCE))
    w.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.1])
    w.add_argument("--aligns", type=int, nargs="+", default=[16])
    w.add_argument("--calib-samples", type=int, default=1024)
    w.add_argument("--threads", type=int, default=1)
    w.set_defaults(func=cmd_sweep)
    ls = sub.add_parser("latsweep")
    ls.add_argument("--source", default=str(SOURCE))
    ls.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.3, 1e9])
    ls.add_argument("--aligns", type=int, nargs="+", default=[16])
    ls.add_argument("--shortcuts", nargs="+", default=["auto", "conv"])
    ls.add_argument("--splits", nargs="+", default=["conv"])
    ls.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ls.add_argument("--calib-samples", type=int, default=1024)
    ls.add_argument("--min-seconds", type=float, default=1.0)
    ls.add_argument("--threads", type=int, default=1)
    ls.set_defaults(func=cmd_latsweep)
    ct = sub.add_parser("control")
    ct.add_argument("--epochs", type=int, default=2)
    ct.add_argument("--threads", type=int, default=1)
    ct.set_defaults(func=cmd_control)
    b = sub.add_parser("bench")
    b.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--min-seconds", type=float, default=1.0)
    b.add_argument("--reexport", action="store_true")
    b.set_defaults(func=cmd_bench)
    r = sub.add_parser("report")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--timings", nargs="+", default=None,
                   help="timing JSON files of repeated bench runs (first: ms and plot; all: ratio columns)")
    r.set_defaults(func=cmd_report)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
