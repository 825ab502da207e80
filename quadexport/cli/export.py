"""``quadexport export RUN_DIR OUT.onnx``: export a trained run to ONNX, then check parity (non-zero exit on a miss)."""

from __future__ import annotations

import argparse
import collections
import logging

log = logging.getLogger(__name__)


def _calibration(model, data_dir):
    """First 256 test images of the run's dataset for the fp16 range check (None if unavailable)."""
    name = (getattr(model, "quadexport_meta", None) or {}).get("dataset")
    if not name:
        return None
    try:
        from quadexport.data import load_dataset

        return load_dataset(name, data_dir=data_dir).x_test[:256]
    except Exception as e:  # noqa: BLE001 - calibration falls back to random inputs
        log.warning("fp16: dataset %s unavailable (%s); calibrating on random inputs", name, e)
        return None


def _opset(s: str) -> int:
    """``--opset``: the range of :func:`quadexport.exporter.targets.check_opset` (the API's, so both agree)."""
    from quadexport.errors import UsageError
    from quadexport.exporter.targets import check_opset

    try:
        return check_opset(s)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(a: argparse.Namespace) -> int:
    import onnx

    from quadexport.checkpoint import load
    from quadexport.atomicfile import StagedFile
    from quadexport.exporter import check_opset, export

    check_opset(a.opset, a.mode)  # mode x opset before the (slow) load
    model = load(a.run_dir)
    calib = _calibration(model, a.data_dir) if a.fp16 else None
    # Written under a temporary name and renamed to a.out only once the parity check passed (or --no-check).
    with StagedFile(a.out) as staged:
        path = export(model, staged.path, mode=a.mode, opset=a.opset, fold_bn=not a.no_fold_bn, fp16=a.fp16,
                      calibration_data=calib)
        proto = onnx.load(str(path), load_external_data=False)
        ops = collections.Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
        print(f"exported {a.out} ({path.stat().st_size / 1e6:.2f} MB, mode {a.mode}, opset {a.opset}"
              f"{', fp16' if a.fp16 else ''}): " + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
        if a.no_check:
            print(f"wrote {a.out} (not checked)")
            return 0
        from quadexport.check import check

        report = check(path, model, batches=(1, 3, 5), opt_levels=("disable", "all"), dataset=False, verbose=False)
        print(report.format())
        if not report.ok:
            staged.discard()
            print(f"parity check failed: {a.out} not written", file=sys.stderr)
            return 1
    print(f"wrote {a.out} (parity checked)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from quadexport.exporter.targets import DEFAULT_OPSET, get_export_target, list_export_targets

    modes = list_export_targets()
    p = sub.add_parser("export", help="export a trained run to ONNX (then check parity)",
                       description="Export RUN_DIR's model to ONNX and check it against torch under onnxruntime "
                                   "(random inputs, batches 1/3/5, ORT_DISABLE_ALL and ORT_ENABLE_ALL). Exit code 1 "
                                   "if the check misses; use `quadexport check` for the full check with test data.")
    p.add_argument("run_dir", help="run directory made by `quadexport train`")
    p.add_argument("out", help="output .onnx file")
    p.add_argument("--mode", choices=modes, default=modes[0],
                   help="; ".join(f"{m}: {get_export_target(m).description}" for m in modes)
                   + f" (default {modes[0]})")
    p.add_argument("--opset", type=_opset, default=DEFAULT_OPSET,
                   help=f"ai.onnx opset, 18-23 (default {DEFAULT_OPSET}); 13-17: decomposed only, legacy "
                        f"TorchScript exporter")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm nodes")
    p.add_argument("--fp16", action="store_true", help="float16 weights/activations (float32 I/O, fp32 islands)")
    p.add_argument("--data-dir", default=None, help="dataset directory for the fp16 calibration")
    p.add_argument("--no-check", action="store_true", help="skip the parity check after export")
    p.set_defaults(func=run)
