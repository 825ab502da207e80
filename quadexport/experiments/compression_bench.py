"""Latency of every model of the compression study: which models (:func:`entries`), their ONNX files, and
``[bench] repeats`` interleaved onnxruntime timings of all of them (:func:`time_all`).

Models: every trained ``[[models]]`` entry but the ``seed`` ones (same graph as their ReLU model), the ReLU control,
every compressed variant (fp32 unless it only quantises; its int8 model as well), and two forms of the ReLU twin for
like-for-like comparisons: with the exact 1×1-conv shortcut rewrite, and int8 (static QDQ, same calibration). A
timing run ``compression/timing-run<i>.json`` is reused when it timed the same files with the same settings; delete
it to time again (on a quiet machine).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quadexport.experiments.compression import CompressionStudy, read_json, stamp, write_json
from quadexport.runmeta import input_shape_of, meta_dict

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One timed model: ``key`` (unique; ``label`` plus ``[int8]`` etc.), kind (the plot's series), accuracy, MACs."""
    label: str
    kind: str
    test_acc: float | None
    macs: int | None
    onnx: str = ""
    run: str | None = None
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.key or self.label


KINDS = {"relu": "relu", "quadratic": "quadratic", "cheap neuron": "cheap neuron"}


def _export(study: CompressionStudy, run: Path, name: str) -> str:
    """``compression/onnx/<name>.onnx`` of run dir ``run`` (exported again when the checkpoint is newer)."""
    from quadexport.runs.checkpoint import load
    from quadexport.exporter import export

    path = study.root / "onnx" / f"{name}.onnx"
    if not path.exists() or path.stat().st_mtime_ns < (run / "checkpoint.pt").stat().st_mtime_ns:
        m = load(run)
        export(m, path, input_shape=input_shape_of(m))
    return str(path)


def _trained(study: CompressionStudy, records: dict[str, dict[str, Any]]) -> list[Entry]:
    from quadexport.runs.checkpoint import load
    from quadexport.zoo import count_macs

    out = []
    for m in study.models():
        run, rec = study.run_dir(m["label"]), records.get(m["label"])
        if m["role"] == "seed" or rec is None or rec["status"] != "ok" or not (run / "checkpoint.pt").exists():
            continue
        model = load(run)
        out.append(Entry(m["label"], KINDS.get(m["role"], m["role"]), rec["final_acc"],
                         count_macs(model, input_shape_of(model)), _export(study, run, m["label"]),
                         str(run)))
    if study.control_label and (study.run_dir(study.control_label) / "checkpoint.pt").exists():
        run = study.run_dir(study.control_label)
        twin = next((e for e in out if e.label == study.settings["twin"]), None)
        acc = read_json(run / "metrics.json")["test_acc"]
        out.append(Entry(study.control_label, f"relu +{study.settings['control_epochs']} ep", acc,
                         twin.macs if twin else None, _export(study, run, study.control_label), str(run)))
    return out


def _variants(study: CompressionStudy, variants: dict[str, Path]) -> list[Entry]:
    out = []
    for name, p in variants.items():
        r = read_json(p / "compress_report.json")
        if r is None:
            continue
        opts = study.recipe["variants"][name]
        if not opts.get("quantize"):
            kind = "pruned + ft" if opts.get("finetune_epochs") else "pruned"
            out.append(Entry(name, kind, r["accuracy"]["final"], r["macs"]["compressed"], str(p / "model.onnx"),
                             str(p)))
        if r.get("int8"):
            out.append(Entry(name, "int8", r["int8"]["test_acc"], r["macs"]["compressed"], str(p / r["int8"]["path"]),
                             str(p), key=f"{name} [int8]"))
    return out


def _twin_forms(study: CompressionStudy, twin: Entry) -> list[Entry]:
    """The trained ReLU twin with 1×1-conv shortcuts, and quantised like the int8 variants."""
    from quadexport.runs.checkpoint import load
    from quadexport.compress.prune import conv_shortcuts
    from quadexport.compress.quant import compare_int8, quantize_int8
    from quadexport.compress.rundata import open_data
    from quadexport.exporter import export
    from quadexport.zoo import count_macs

    model = load(twin.run)
    meta, shape = meta_dict(model), input_shape_of(model)
    convsc = conv_shortcuts(model)
    path = study.root / "onnx" / f"{twin.label}-convsc.onnx"
    if not path.exists() or path.stat().st_mtime_ns < Path(twin.onnx).stat().st_mtime_ns:
        export(convsc, path, input_shape=shape)
    key = f"{twin.label} [1x1-conv shortcuts]"
    out = [Entry(key, "relu", twin.test_acc, count_macs(convsc, shape), str(path), twin.run, key)]
    q8 = study.root / "onnx" / f"{twin.label}-int8.onnx"
    data = open_data(twin.run, meta, 1024, val_samples=0)
    if not q8.exists() or q8.stat().st_mtime_ns < Path(twin.onnx).stat().st_mtime_ns:
        quantize_int8(twin.onnx, q8, data.calib.numpy())
    acc = compare_int8(q8, twin.onnx, data.batches("test"))["test_acc"]
    out.append(Entry(twin.label, "relu int8", acc, twin.macs, str(q8), twin.run, f"{twin.label} [int8]"))
    return out


def entries(study: CompressionStudy, records: dict[str, dict[str, Any]], variants: dict[str, Path]) -> list[Entry]:
    """Every model to time (module docstring), ONNX files exported where missing."""
    out = _trained(study, records)
    out += _variants(study, variants)
    twin = next((e for e in out if e.label == study.settings["twin"] and e.kind == "relu"), None)
    if twin is not None:
        out += _twin_forms(study, twin)
    return out


def time_all(study: CompressionStudy, ents: list[Entry]) -> list[dict[str, Any]]:
    """``[bench] repeats`` interleaved timings of every entry (``compression/timing-run<i>.json``, reused when the
    same files were timed with the same settings)."""
    from quadexport.compress.latency import time_onnx

    cfg = study.recipe.get("bench", {})
    batches, secs = [int(b) for b in cfg.get("batches", [1, 64])], float(cfg.get("min_seconds", 1.0))
    threads = int(cfg.get("threads", study.threads))
    files = {e.key: e.onnx for e in ents}
    params = {"files": {k: [p, stamp(Path(p))] for k, p in files.items()}, "batches": batches, "threads": threads,
              "min_seconds": secs}
    shape = _input_shape(ents)
    out = []
    for i in range(1, int(cfg.get("repeats", 1)) + 1):
        path = study.root / f"timing-run{i}.json"
        done = read_json(path)
        if done is not None and done.get("params") == params:
            log.info("  timing run %d: done", i)
        else:
            log.info("  timing run %d: %d models interleaved, batches %s, %d thread(s); load %s", i, len(files),
                     batches, threads, os.getloadavg())
            done = {**time_onnx(files, shape, batches, threads, min_seconds=secs, seed=i - 1), "params": params,
                    "entries": [asdict(e) for e in ents]}
            write_json(path, done)
        out.append(done)
    return out


def _input_shape(ents: list[Entry]) -> tuple[int, ...]:
    from quadexport.runs.checkpoint import load

    return input_shape_of(load(next(e.run for e in ents if e.run)))


__all__ = ["Entry", "entries", "time_all"]
