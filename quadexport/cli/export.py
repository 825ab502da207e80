"""``quadexport export RUN_DIR OUT.onnx``: export a trained run to ONNX, then check parity (non-zero exit on a miss)."""

from __future__ import annotations

import argparse
import collections
import sys


def _calibration(model, data_dir):
    """First 256 test images of the run's dataset for the fp16 range check (None if unavailable)."""
    name = (getattr(model, "quadexport_meta", None) or {}).get("dataset")
    if not name:
        return None
    try:
        from quadexport.data import load_dataset

        return load_dataset(name, data_dir=data_dir).x_test[:256]
    except Exception as e:  # noqa: BLE001 - calibration falls back to random inputs
        print(f"fp16: dataset {name} unavailable ({e}); calibrating on random inputs", file=sys.stderr)
        return None


MIN_OPSET, MAX_OPSET = 13, 23


def _opset(s: str) -> int:
    v = int(s)
    if not MIN_OPSET <= v <= MAX_OPSET:
        raise argparse.ArgumentTypeError(f"opset {v} is out of range: quadexport exports opsets {MIN_OPSET}-{MAX_OPSET}"
                                         f" (18-23 with the dynamo exporter, 13-17 legacy)")
    return v


def run(a: argparse.Namespace) -> int:
    import onnx

    from quadexport.checkpoint import load
    from quadexport.exporter import export

    model = load(a.run_dir)
    calib = _calibration(model, a.data_dir) if a.fp16 else None
    path = export(model, a.out, mode=a.mode, opset=a.opset, fold_bn=not a.no_fold_bn, fp16=a.fp16,
                  calibration_data=calib)
    proto = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, mode {a.mode}, opset {a.opset}"
          f"{', fp16' if a.fp16 else ''}): " + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
    if a.no_check:
        return 0
    from quadexport.check import check

    report = check(path, model, batches=(1, 3, 5), opt_levels=("disable", "all"), dataset=False, verbose=True)
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run to ONNX (then check parity)",
                       description="Export RUN_DIR's model to ONNX and check it against torch under onnxruntime "
                                   "(random inputs, batches 1/3/5, ORT_DISABLE_ALL and ORT_ENABLE_ALL). Exit code 1 "
                                   "if the check misses; use `quadexport check` for the full check with test data.")
    p.add_argument("run_dir", help="run directory made by `quadexport train`")
    p.add_argument("out", help="output .onnx file")
    p.add_argument("--mode", choices=("decomposed", "function", "fused"), default="decomposed",
                   help="decomposed: standard ops only (default); function: one quadexport node per layer with a "
                        "function body; fused: the same, marked to run on the kernel library")
    p.add_argument("--opset", type=_opset, default=20,
                   help="ai.onnx opset, 18-23 (default 20); 13-17: decomposed only, legacy TorchScript exporter")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm nodes")
    p.add_argument("--fp16", action="store_true", help="float16 weights/activations (float32 I/O, fp32 islands)")
    p.add_argument("--data-dir", default=None, help="dataset directory for the fp16 calibration")
    p.add_argument("--no-check", action="store_true", help="skip the parity check after export")
    p.set_defaults(func=run)
