"""``compress(run_dir, out, ...)``: prune quadratic terms, optionally fine-tune and quantise, write a run dir and a
report (``compress_report.json`` / ``.md``)."""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from quadexport.compress.prune import (Plan, channel_scores, collect_stats, compress_model, fold_mixed_bn, get_spec,
                                       nchwc_block, plan)

REPORT_JSON, REPORT_MD = "compress_report.json", "compress_report.md"
FP32_ONNX, INT8_ONNX = "model.onnx", "model.int8.onnx"
DEFAULT_THRESHOLD = 0.05


class CompressError(ValueError):
    """A run dir that cannot be compressed, or contradictory options."""


def _macs(model: nn.Module, shape: Sequence[int]) -> int:
    from quadexport.zoo import count_macs

    return count_macs(model, tuple(shape))


def twin_of(model: nn.Module) -> nn.Module:
    """The ReLU twin (same builder and options, ``neuron="relu"``, fresh weights) of a zoo model."""
    from quadexport.zoo import create_model

    cfg = {k: v for k, v in model.quadexport_config.items() if k != "compress"}
    name = cfg.pop("name")
    cfg["neuron"] = "relu"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model(name, **cfg).eval()


def calibration_data(meta: dict[str, Any], n: int, data_dir: str | None = None, seed: int = 0):
    """``(calibration images, dataset)``: ``n`` images drawn (seeded) from the run's training subset, and the
    dataset (training subset as in the run, full test split)."""
    from quadexport.data import load_dataset

    tc = meta.get("train_config") or {}
    ds = load_dataset(meta["dataset"], data_dir=data_dir or tc.get("data_dir"), train_subset=tc.get("train_subset"),
                      test_subset=tc.get("test_subset"), seed=int(tc.get("seed", 0)))
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(ds.x_train), generator=g)[:int(n)]
    return ds.x_train[idx], ds


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from quadexport.train import evaluate

    return float(evaluate(model, x, y, torch.device("cpu"))[1])


def search_threshold(model: nn.Module, scores: dict, target: float, cost: Callable[[Plan], float], align: int,
                     drop_branches: bool = True, max_steps: int = 40,
                     log: Callable[[str], None] = print) -> tuple[float, list[dict[str, float]]]:
    """Smallest threshold whose plan has ``cost(plan) <= target`` (cost falls as the threshold rises), by bisection
    over the distinct channel scores. Returns ``(threshold, trace)``."""
    vals = sorted({float(v) for sc in scores.values() for v in sc["lin"].score.tolist()})
    cands = [0.0] + [math.nextafter(v, math.inf) for v in vals]
    trace: list[dict[str, float]] = []
    memo: dict[int, float] = {}

    def c(i: int) -> float:
        if i not in memo:
            memo[i] = cost(plan(model, scores, cands[i], align, drop_branches))
            trace.append({"threshold": cands[i], "cost": memo[i]})
            log(f"  threshold {cands[i]:.4g}: cost {memo[i]:.3f}")
        return memo[i]

    if c(0) <= target:
        return cands[0], trace
    lo, hi = 0, len(cands) - 1
    if c(hi) > target:
        return cands[hi], trace
    steps = 0
    while hi - lo > 1 and steps < max_steps:
        mid = (lo + hi) // 2
        if c(mid) <= target:
            hi = mid
        else:
            lo = mid
        steps += 1
    return cands[hi], trace


def _export(model: nn.Module, path: Path, shape: Sequence[int]) -> Path:
    from quadexport.exporter import export

    return export(model, path, mode="decomposed", input_shape=tuple(shape))


def compress(run_dir: str | Path, out: str | Path, *, threshold: float | None = None,
             target_ratio: float | None = None, cost: str = "macs", quantize: str | None = None,
             keep_fp32: str = "none", finetune_epochs: int = 0, finetune_lr: float | None = None,
             calib_samples: int = 1024, align: int | None = None, split: str = "conv", shortcut: str = "auto",
             drop_branches: bool = True, bn_recalibrate: bool = False,
             bench: bool = True, batches: Sequence[int] = (1, 64), threads: int | None = None,
             min_seconds: float = 1.0, twin: str | Path | None = None, data_dir: str | None = None,
             check: bool = True, overwrite: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Compress a trained quadratic run into a new run dir (see ``docs/compression.md``).

    Args:
        run_dir: the trained run (quadratic model, e.g. QResNet20 Fan with ReLinear).
        out: the new run dir (checkpoint.pt rebuilds the compressed architecture; ``model.onnx``,
            ``model.int8.onnx`` if quantised, ``compress_report.json``/``.md``).
        threshold: prune channels whose quadratic contribution score is below this (default 0.05 unless
            ``target_ratio`` or only ``quantize`` is given).
        target_ratio: instead of a threshold: the largest-threshold-free plan whose cost vs the ReLU twin is at most
            this (``cost="macs"``: MAC ratio; ``"latency"``: measured onnxruntime p50 ratio, worst of ``batches``).
        cost: ``"macs"`` or ``"latency"`` (for ``target_ratio``).
        quantize: ``None`` or ``"int8"`` (static QDQ, calibrated on ``calib_samples`` training images).
        keep_fp32: int8: ``"none"``, ``"products"`` or ``"quadratic"`` (:mod:`quadexport.compress.quant`).
        finetune_epochs: fine-tune the pruned model for this many epochs with the run's recipe.
        finetune_lr: fine-tuning base LR (default: the run's LR × 0.1).
        calib_samples: calibration images (from the run's training subset).
        align: quadratic-prefix alignment of conv layers (default: onnxruntime's NCHWc block, 16 on AVX-512).
        split: ``"conv"`` or ``"slice"`` (:class:`~quadexport.compress.layers.MixedQuad`).
        shortcut: ``"auto"`` or ``"conv"`` (:func:`~quadexport.compress.prune.compress_model`; with ``"conv"`` the
            report also times the ReLU twin with the same shortcut rewrite).
        drop_branches: let layers drop an unneeded ``b``/``g`` branch.
        bn_recalibrate: after pruning (if a layer changed), re-estimate the BatchNorm statistics on the
            calibration images (corrects the drift of later layers' inputs; measured on QResNet20: +0.5 pp when
            every channel is linearised, ±0.15 pp noise at moderate thresholds - so off by default).
        bench: measure onnxruntime latency of the original, compressed (and int8) model and the ReLU twin.
        batches: batch sizes of the latency measurement.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        min_seconds: timed seconds per model and batch.
        twin: run dir of the trained ReLU twin (its accuracy goes into the report; default: a zoo-built twin for
            timing only).
        data_dir: dataset location override.
        check: run the onnxruntime parity check of the fp32 export (``parity.json``).
        overwrite: replace an existing ``out``.
        verbose: print progress.

    Returns:
        The report dict (also written to ``out``).
    """
    from quadexport.checkpoint import build_from_checkpoint, read_checkpoint, save_checkpoint, write_json

    log = print if verbose else (lambda *a, **k: None)
    t_start = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    if threshold is not None and target_ratio is not None:
        raise CompressError("give --prune-threshold or --target-ratio, not both")
    if threshold is not None and not (threshold >= 0 and math.isfinite(threshold)):
        raise CompressError(f"threshold must be a finite number >= 0, got {threshold}")
    if target_ratio is not None and not target_ratio > 0:
        raise CompressError(f"target ratio must be > 0, got {target_ratio}")
    if cost not in ("macs", "latency"):
        raise CompressError(f"cost must be macs or latency, got {cost!r}")
    if quantize not in (None, "int8"):
        raise CompressError(f"quantize must be int8, got {quantize!r}")
    if finetune_epochs < 0 or calib_samples < 1:
        raise CompressError("finetune epochs must be >= 0 and calib samples >= 1")
    if out.resolve() == run_dir.resolve():
        raise CompressError("--out must be a new run dir, not the input run dir")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CompressError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(out)
    if threshold is None and target_ratio is None:
        threshold = 0.0 if quantize else DEFAULT_THRESHOLD
    ckpt = read_checkpoint(run_dir)
    model = build_from_checkpoint(ckpt).eval()
    already = get_spec(model) is not None
    if already and (target_ratio is not None or threshold or finetune_epochs or not quantize):
        raise CompressError(f"{run_dir} is already compressed: only --quantize int8 (without pruning or "
                            f"fine-tuning) applies to it; compress the original run instead")
    meta = dict(ckpt["meta"])
    if not meta.get("dataset"):
        raise CompressError(f"{run_dir} has no dataset in its metadata; cannot calibrate")
    shape = tuple(int(v) for v in meta["input_shape"])
    align = nchwc_block() if align is None else int(align)

    log(f"== calibrate on {calib_samples} {meta['dataset']} training images")
    calib, ds = calibration_data(meta, calib_samples, data_dir)
    x_test, y_test = ds.x_test, ds.y_test
    t0 = time.perf_counter()
    tc = meta.get("train_config") or {}
    if isinstance(meta.get("test_acc"), float) and tc and tc.get("test_subset") is None and not data_dir:
        acc_orig = float(meta["test_acc"])  # the run's own evaluation on this same (full) test split
    else:
        acc_orig = _accuracy(model, x_test, y_test)
    stats = collect_stats(model, calib) if not already else {}
    scores = channel_scores(stats)
    if not scores and not already:
        raise CompressError(f"{run_dir}: no Fan-form quadratic layer to prune "
                            f"(neuron {model.quadexport_config.get('neuron')!r})")
    log(f"   original test accuracy {100 * acc_orig:.2f}% ({time.perf_counter() - t0:.0f} s)")
    twin_model = twin_of(model)
    macs_twin = _macs(twin_model, shape)
    macs_orig = _macs(model, shape)
    trace: list[dict[str, float]] = []
    tmp = Path(tempfile.mkdtemp(prefix="quadexport-compress-"))
    try:
        if target_ratio is not None:
            log(f"== search the threshold for a {cost} ratio <= {target_ratio} vs the ReLU twin")
            twin_onnx = None
            if cost == "latency":
                twin_onnx = _export(twin_model, tmp / "twin.onnx", shape)

            def cost_fn(p: Plan) -> float:
                cm, _ = compress_model(model, p, scores, split, shortcut)
                if cost == "macs":
                    return _macs(cm, shape) / macs_twin
                from quadexport.compress.timing import p50, time_onnx

                fold_mixed_bn(cm, json.loads(cm.quadexport_config["compress"]))
                path = _export(cm, tmp / "cand.onnx", shape)
                t = time_onnx({"c": path, "t": twin_onnx}, shape, batches, threads, min_seconds=0.5)
                return max(p50(t, "c", b) / p50(t, "t", b) for b in batches)

            threshold, trace = search_threshold(model, scores, float(target_ratio), cost_fn, align, drop_branches,
                                                max_steps=40 if cost == "macs" else 7, log=log)
        if already:  # int8 of a compressed run: the model as it is
            pl = None
            cmodel, spec = copy.deepcopy(model), get_spec(model)
        else:
            pl = plan(model, scores, float(threshold), align, drop_branches)
            cmodel, spec = compress_model(model, pl, scores, split, shortcut)
        changed = bool(spec["layers"]) and not already
        if bn_recalibrate and changed:
            from quadexport.compress.prune import recalibrate_bn

            recalibrate_bn(cmodel, calib)
        with torch.no_grad():
            ref = model(calib[:256])
            rel = float((cmodel(calib[:256]) - ref).norm() / ref.norm())
        if pl is not None:
            log(f"== threshold {threshold:.4g}: {sum(p.k for p in pl.layers.values())}/"
                f"{sum(p.channels for p in pl.layers.values())} quadratic channels kept, MACs ×"
                f"{_macs(cmodel, shape) / macs_twin:.2f} of the ReLU twin, calibration logits rel. change {rel:.2e}")
        ft_hist: list[dict[str, Any]] = []
        acc_pruned = None
        if finetune_epochs:
            acc_pruned = _accuracy(cmodel, x_test, y_test)
            log(f"   pruned test accuracy before fine-tuning {100 * acc_pruned:.2f}% "
                f"(original {100 * acc_orig:.2f}%)")
            from quadexport.compress.finetune import finetune

            log(f"== fine-tune {finetune_epochs} epoch(s)")
            ft_hist = finetune(cmodel, ds.x_train, ds.y_train, x_test, y_test, tc, finetune_epochs, lr=finetune_lr,
                               seed=int(tc.get("seed", 0)), log=log)
        folded = fold_mixed_bn(cmodel, spec) if not already else []
        cmodel.eval()
        if changed or finetune_epochs:
            acc_final = _accuracy(cmodel, x_test, y_test)
        else:  # nothing changed (e.g. int8 only): the fp32 model is the input run's
            acc_final = acc_orig
        if acc_pruned is None:  # no fine-tuning: the pruned model is the final one (BN folding aside)
            acc_pruned = acc_final
        log(f"   test accuracy {100 * acc_final:.2f}% (original {100 * acc_orig:.2f}%, "
            f"{100 * (acc_final - acc_orig):+.2f} pp)")
        macs_c = _macs(cmodel, shape)

        # -- the run dir ---------------------------------------------------------------------------------------
        out.mkdir(parents=True, exist_ok=True)
        cmeta = dict(meta)
        cmeta.update(test_acc=acc_final, compressed_from=str(run_dir), uncompressed_test_acc=acc_orig,
                     compression={"threshold": threshold, "target_ratio": target_ratio, "cost": cost,
                                  "finetune_epochs": finetune_epochs, "quantize": quantize, "keep_fp32": keep_fp32,
                                  "align": align, "split": split, "shortcut": shortcut,
                                  "calib_samples": calib_samples, "bn_recalibrated": bool(bn_recalibrate and changed),
                                  "source_compression": meta.get("compression")})
        if quantize:
            cmeta["int8_onnx"] = INT8_ONNX
        save_checkpoint(out, cmodel, cmeta, None, int(ckpt.get("epoch", 0)), {"compressed": True})
        cmodel.quadexport_meta = cmeta
        write_json(out / "config.json", {"compression": cmeta["compression"], "source": str(run_dir),
                                         "train_config": meta.get("train_config")})
        write_json(out / "metrics.json", {"model": cmodel.quadexport_config.get("name"),
                                          "neuron": cmodel.quadexport_config.get("neuron"),
                                          "dataset": meta["dataset"], "test_acc": acc_final,
                                          "uncompressed_test_acc": acc_orig, "pruned_test_acc": acc_pruned,
                                          "finetune": ft_hist, "epochs": []})
        fp32_path = _export(cmodel, out / FP32_ONNX, shape)
        parity = None
        if check:
            from quadexport.check import check as run_check

            rep = run_check(fp32_path, cmodel, batches=(1, 3, 64), verbose=False, dataset=meta["dataset"],
                            data_dir=data_dir)
            rep.save(out / "parity.json")
            parity = {"ok": rep.ok, "worst_rel_l2": rep.worst_rel_l2}
            log(f"== parity of {fp32_path}: {'ok' if rep.ok else 'FAILED'} (worst rel_l2 {rep.worst_rel_l2:.1e})")

        int8 = None
        if quantize:
            from quadexport.compress.quant import onnx_accuracy, quantize_int8

            log(f"== int8 static quantisation (keep fp32: {keep_fp32})")
            info = quantize_int8(fp32_path, out / INT8_ONNX, calib.numpy(), keep_fp32=keep_fp32)
            acc8, logits8 = onnx_accuracy(out / INT8_ONNX, x_test.numpy(), y_test.numpy(), threads=threads)
            acc32, logits32 = onnx_accuracy(fp32_path, x_test.numpy(), y_test.numpy(), threads=threads)
            rel8 = float(np.linalg.norm(logits8 - logits32) / np.linalg.norm(logits32))
            int8 = {**info, "path": INT8_ONNX, "test_acc": acc8, "fp32_onnx_test_acc": acc32, "rel_l2_vs_fp32": rel8,
                    "top1_agreement": float((logits8.argmax(1) == logits32.argmax(1)).mean())}
            log(f"   int8 test accuracy {100 * acc8:.2f}% (fp32 {100 * acc32:.2f}%), logits rel_l2 {rel8:.3f}")

        twin_acc = None
        if twin is not None:
            from quadexport.checkpoint import load

            tm = load(twin)
            twin_acc = float(tm.quadexport_meta.get("test_acc")) if tm.quadexport_meta.get("test_acc") is not None \
                else _accuracy(tm, x_test, y_test)
            twin_model = tm
        timing = None
        if bench:
            from quadexport.compress.timing import time_onnx

            log(f"== latency (onnxruntime CPU, interleaved, batches {list(batches)})")
            bdir = out / "bench"
            files = {"original": _export(model, bdir / "original.onnx", shape),
                     "compressed": fp32_path, "relu_twin": _export(twin_model, bdir / "relu_twin.onnx", shape)}
            if quantize:
                files["compressed_int8"] = out / INT8_ONNX
            if shortcut == "conv":
                from quadexport.compress.prune import conv_shortcuts

                files["relu_twin_convsc"] = _export(conv_shortcuts(copy.deepcopy(twin_model)),
                                                    bdir / "relu_twin_convsc.onnx", shape)
            timing = time_onnx(files, shape, batches, threads, min_seconds=min_seconds)
        report = build_report(run_dir, out, model, cmodel, pl, acc_orig, acc_pruned, acc_final, twin_acc, macs_orig,
                              macs_c, macs_twin, timing, int8, parity, ft_hist, trace, folded, rel,
                              time.perf_counter() - t_start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(out / REPORT_JSON, report)
    (out / REPORT_MD).write_text(render_report(report))
    log(f"== wrote {out} ({REPORT_MD})")
    return report


def build_report(run_dir: Path, out: Path, model: nn.Module, cmodel: nn.Module, pl: Plan, acc_orig: float,
                 acc_pruned: float, acc_final: float, twin_acc: float | None, macs_orig: int, macs_c: int,
                 macs_twin: int, timing: dict | None, int8: dict | None, parity: dict | None,
                 ft_hist: list, trace: list, folded: list, rel: float, seconds: float) -> dict[str, Any]:
    from quadexport.compress.prune import get_spec
    from quadexport.compress.timing import p50

    layers = []
    spec = get_spec(cmodel) or {}
    if pl is None:  # quantisation of an already compressed run
        from quadexport.compress.layers import MixedQuad
        from quadexport.layers.quad import QuadLayer

        pdict = {"threshold": None, "align": None, "layers": [], "permuted_groups": [],
                 "notes": [f"int8 of the already compressed run {run_dir} (its pruning is in its own report)"]}
        kept = sum(m.k for m in cmodel.modules() if isinstance(m, MixedQuad)) + \
            sum(m.r.weight.shape[0] for m in cmodel.modules() if isinstance(m, QuadLayer))
        qch = {"kept": kept, "total": None}
    else:
        pdict = pl.to_dict()
        qch = {"kept": sum(p.k for p in pl.layers.values()), "total": sum(p.channels for p in pl.layers.values())}
        for name, lp in pl.layers.items():
            d = lp.to_dict()
            d["form"] = "quadratic" if lp.unchanged else spec.get("layers", {}).get(name, {}).get("type", "?")
            layers.append(d)
    ratios = []
    if timing is not None:
        for b in timing["config"]["batches"]:
            t = p50(timing, "relu_twin", b)
            row = {"batch": b, "relu_twin_ms": t}
            for k in ("original", "compressed", "compressed_int8", "relu_twin_convsc"):
                v = p50(timing, k, b)
                if v is not None:
                    row[f"{k}_ms"] = v
                    row[f"{k}_ratio"] = v / t
            if "relu_twin_convsc_ms" in row:  # like for like: both with the shortcut rewrite
                row["compressed_vs_twin_convsc"] = row["compressed_ms"] / row["relu_twin_convsc_ms"]
            ratios.append(row)
    return {
        "source": str(run_dir), "out": str(out), "model": cmodel.quadexport_config.get("name"),
        "neuron": cmodel.quadexport_config.get("neuron"), "plan": pdict, "layers": layers,
        "quadratic_channels": qch,
        "accuracy": {"original": acc_orig, "pruned": acc_pruned, "final": acc_final,
                     "delta_pp": 100 * (acc_final - acc_orig), "relu_twin": twin_acc,
                     "calibration_logits_rel_change": rel},
        "macs": {"original": macs_orig, "compressed": macs_c, "relu_twin": macs_twin,
                 "compressed_ratio": macs_c / macs_twin, "original_ratio": macs_orig / macs_twin},
        "latency": timing, "latency_ratios": ratios, "int8": int8, "parity": parity, "finetune": ft_hist,
        "threshold_search": trace, "folded_bn": folded, "seconds": seconds,
    }


def render_report(r: dict[str, Any]) -> str:
    """Markdown rendering of a compression report."""
    a, m = r["accuracy"], r["macs"]
    head = (f"{r['model']} ({r['neuron']}), threshold {r['plan']['threshold']:.4g}, alignment {r['plan']['align']}: "
            f"{r['quadratic_channels']['kept']}/{r['quadratic_channels']['total']} quadratic channels kept."
            if r["plan"]["threshold"] is not None else
            f"{r['model']} ({r['neuron']}): int8 of an already compressed run "
            f"({r['quadratic_channels']['kept']} quadratic channels).")
    lines = [f"# Compression of `{r['source']}`", "", head, "",
             "| | test accuracy | MACs | MACs / ReLU twin |", "|---|---|---|---|",
             f"| original | {100 * a['original']:.2f}% | {m['original'] / 1e6:.2f}M | {m['original_ratio']:.2f} |",
             f"| compressed (pruned{', fine-tuned' if r['finetune'] else ''}) | {100 * a['final']:.2f}% "
             f"({a['delta_pp']:+.2f} pp) | {m['compressed'] / 1e6:.2f}M | {m['compressed_ratio']:.2f} |"]
    if r["finetune"]:
        lines.append(f"| pruned, before fine-tuning | {100 * a['pruned']:.2f}% | | |")
    if r.get("int8"):
        lines.append(f"| compressed int8 (keep fp32: {r['int8']['keep_fp32']}) | {100 * r['int8']['test_acc']:.2f}% "
                     f"| | |")
    if a.get("relu_twin") is not None:
        lines.append(f"| ReLU twin (trained) | {100 * a['relu_twin']:.2f}% | {m['relu_twin'] / 1e6:.2f}M | 1.00 |")
    else:
        lines.append(f"| ReLU twin | | {m['relu_twin'] / 1e6:.2f}M | 1.00 |")
    if r.get("latency_ratios"):
        lat = r["latency"]
        lines += ["", f"Latency (onnxruntime CPU, p50, interleaved; threads {lat['config']['threads'] or 'default'}, "
                      f"load average {lat['load_before']} → {lat['load_after']}):", "",
                  "| batch | ReLU twin ms | original ms (ratio) | compressed ms (ratio) |" +
                  (" int8 ms (ratio) |" if r.get("int8") else ""),
                  "|---|---|---|---|" + ("---|" if r.get("int8") else "")]
        for x in r["latency_ratios"]:
            s = (f"| {x['batch']} | {x['relu_twin_ms']:.3f} | {x['original_ms']:.3f} ({x['original_ratio']:.2f}×) | "
                 f"{x['compressed_ms']:.3f} ({x['compressed_ratio']:.2f}×) |")
            if "compressed_int8_ms" in x:
                s += f" {x['compressed_int8_ms']:.3f} ({x['compressed_int8_ratio']:.2f}×) |"
            lines.append(s)
        for x in r["latency_ratios"]:
            if "relu_twin_convsc_ms" in x:
                lines.append(f"- batch {x['batch']}: the ReLU twin with the same 1×1-conv shortcuts runs in "
                             f"{x['relu_twin_convsc_ms']:.3f} ms; compressed / that = "
                             f"{x['compressed_vs_twin_convsc']:.2f}× (like for like)")
    if r.get("parity"):
        lines += ["", f"fp32 parity (`quadexport check`): {'passed' if r['parity']['ok'] else 'FAILED'}, worst rel_l2 "
                      f"{r['parity']['worst_rel_l2']:.1e} (parity.json)."]
    lines += ["", "| layer | channels | quadratic (own) | kept prefix k | g | b | max error of linearised channels |",
              "|---|---|---|---|---|---|---|"]
    for d in r["layers"]:
        lines.append(f"| {d['layer']} | {d['channels']} | {d['quadratic_own']} | {d['k']} | "
                     f"{'✓' if d['g'] else '–'} | {'✓' if d['b'] else '–'} | {d['max_error']:.3f} |")
    if r["plan"]["permuted_groups"]:
        lines += ["", "Permuted channel groups: " + ", ".join(r["plan"]["permuted_groups"])]
    for n in r["plan"]["notes"]:
        lines.append(f"- {n}")
    lines += ["", f"({r['seconds']:.0f} s)"]
    return "\n".join(lines) + "\n"


__all__ = ["CompressError", "DEFAULT_THRESHOLD", "FP32_ONNX", "INT8_ONNX", "REPORT_JSON", "REPORT_MD",
           "calibration_data", "compress", "render_report", "search_threshold", "twin_of"]
