"""Threshold sweeps of the compression study (``[sweep]``, ``[latsweep]`` of ``models/exp-compression.toml``).

- :func:`sweep`: test accuracy, kept quadratic channels and MAC ratio of the pruned source model per threshold ×
  alignment, without fine-tuning (``compression/sweep.json``, with the per-layer channel scores the plot draws);
- :func:`latsweep`: onnxruntime latency of the pruned architectures per threshold × alignment × shortcut form ×
  mixed-layer split, interleaved with the original and the ReLU twin (plain and with 1×1-conv shortcuts)
  (``compression/latsweep-t<threads>.json``).

Both are reused when their parameters and the source checkpoint are unchanged.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from quadexport.experiments.compression import CompressionStudy, read_json, stamp, write_json
from quadexport.runmeta import input_shape_of, meta_dict

log = logging.getLogger(__name__)


def _cached(path: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    done = read_json(path)
    return done if done is not None and done.get("params") == params else None


def _open_source(study: CompressionStudy, calib_samples: int) -> tuple[Any, Any, tuple[int, ...], dict[str, Any]]:
    """``(model, data, input shape, channel scores)`` of the study's source run."""
    import torch

    from quadexport.runs.checkpoint import load
    from quadexport.compress import channel_scores, collect_stats
    from quadexport.compress.rundata import open_data

    torch.set_num_threads(study.threads)
    src = study.run_dir(study.settings["source"])
    model = load(src)
    data = open_data(src, meta_dict(model), calib_samples, val_samples=0)
    return model, data, input_shape_of(model), channel_scores(collect_stats(model, data.calib))


def _params(study: CompressionStudy, section: str) -> dict[str, Any]:
    src = study.run_dir(study.settings["source"]) / "checkpoint.pt"
    return {**study.recipe.get(section, {}), "source": str(src.parent), "source_stamp": stamp(src),
            "threads": study.threads}


def sweep(study: CompressionStudy) -> dict[str, Any] | None:
    """Accuracy (no fine-tuning), kept quadratic channels and MAC ratio of the pruned model per threshold."""
    if "sweep" not in study.recipe:
        return None
    from quadexport.compress import compress_model, plan, twin_of
    from quadexport.zoo import count_macs

    path, params = study.root / "sweep.json", _params(study, "sweep")
    if (done := _cached(path, params)) is not None:
        log.info("  sweep: done")
        return done
    cfg = study.recipe["sweep"]
    model, data, shape, scores = _open_source(study, int(cfg.get("calib_samples", 1024)))
    twin_macs, acc0 = count_macs(twin_of(model), shape), data.accuracy(model, "test")
    rows = []
    for t in cfg["thresholds"]:
        for align in cfg.get("aligns", [16]):
            pl = plan(model, scores, t, align)
            cm, _ = compress_model(model, pl, scores)
            acc = data.accuracy(cm, "test")
            rows.append({"threshold": t, "align": align, "test_acc": acc, "delta_pp": 100 * (acc - acc0),
                         "mac_ratio": count_macs(cm, shape) / twin_macs, "kept": sum(p.k for p in pl.layers.values()),
                         "own": sum(len(p.own) for p in pl.layers.values()),
                         "layers": {n: [p.k, p.g, p.b] for n, p in pl.layers.items()}})
            r = rows[-1]
            log.info("  sweep t=%g align=%d: kept %d, MACs x%.2f, acc %.2f%% (%+.2f pp)", t, align, r["kept"],
                     r["mac_ratio"], 100 * acc, r["delta_pp"])
    res = {"params": params, "source": params["source"], "test_acc": acc0, "rows": rows,
           "scores": {n: sorted(float(v) for v in sc["lin"].score) for n, sc in scores.items()}}
    write_json(path, res)
    return res


def _latsweep_models(study: CompressionStudy, cfg: dict[str, Any], odir: Path) -> tuple[dict[str, Path], dict]:
    """Export the twin (plain, 1×1-conv shortcuts), the original and every pruned architecture of the grid."""
    from quadexport.compress import compress_model, fold_mixed_bn, get_spec, plan, twin_of
    from quadexport.compress.prune import conv_shortcuts
    from quadexport.exporter import export
    from quadexport.zoo import count_macs

    model, _, shape, scores = _open_source(study, int(cfg.get("calib_samples", 1024)))
    twin = twin_of(model)
    files = {"relu_twin": export(twin, odir / "relu_twin.onnx", input_shape=shape),
             "relu_twin_convsc": export(conv_shortcuts(copy.deepcopy(twin)), odir / "relu_twin_convsc.onnx",
                                        input_shape=shape),
             "original": export(model, odir / "original.onnx", input_shape=shape)}
    info, twin_macs = {}, count_macs(twin, shape)
    for t in cfg["thresholds"]:
        for align in cfg.get("aligns", [16]):
            for sc in cfg.get("shortcuts", ["auto"]):
                for split in cfg.get("splits", ["conv"]):
                    pl = plan(model, scores, t, align)
                    cm, spec = compress_model(model, pl, scores, split, sc)
                    fold_mixed_bn(cm, spec)
                    key = f"t{t:g}-a{align}-{sc}-{split}"
                    files[key] = export(cm, odir / f"{key}.onnx", input_shape=shape)
                    info[key] = {"threshold": t, "align": align, "shortcut": sc, "split": split,
                                 "mac_ratio": count_macs(cm, shape) / twin_macs,
                                 "kept": sum(p.k for p in pl.layers.values()),
                                 "mixed": sum(1 for d in get_spec(cm)["layers"].values() if d["type"] == "mixed")}
    return files, {"info": info, "shape": shape}


def latsweep(study: CompressionStudy) -> dict[str, Any] | None:
    """onnxruntime latency of the pruned architectures (trained weights, no fine-tuning) per threshold × alignment ×
    shortcut form × split, interleaved with the original and the ReLU twin (plain and with 1×1-conv shortcuts)."""
    if "latsweep" not in study.recipe:
        return None
    from quadexport.compress.latency import time_onnx

    path = study.root / f"latsweep-t{study.threads}.json"
    params = {**_params(study, "latsweep"), "batches": study.recipe.get("bench", {}).get("batches", [1, 64])}
    if (done := _cached(path, params)) is not None:
        log.info("  latsweep: done")
        return done
    cfg = study.recipe["latsweep"]
    odir = study.root / "latsweep"
    odir.mkdir(parents=True, exist_ok=True)
    files, extra = _latsweep_models(study, cfg, odir)
    log.info("  latsweep: timing %d models interleaved", len(files))
    tm = time_onnx(files, extra["shape"], params["batches"], study.threads,
                   min_seconds=float(cfg.get("min_seconds", 1.0)))
    res = {**tm, "info": extra["info"], "params": params}
    write_json(path, res)
    return res


__all__ = ["latsweep", "sweep"]
