"""``quadexport export RUN_DIR OUT.onnx``: export a trained run to ONNX, then check parity (non-zero exit on a miss)."""

from __future__ import annotations

import argparse
import collections
import logging
import sys
from quadexport.runmeta import meta_dict

log = logging.getLogger(__name__)

USAGE = "quadexport export RUN_DIR OUT.onnx"


def _test_inputs(model, data_dir, n: int):
    """The first ``n`` test inputs (normalised) of the run's own dataset, or None when unavailable."""
    meta = meta_dict(model)
    if not meta.get("dataset"):
        return None
    try:
        import torch

        from quadexport.data import open_run_dataset

        src = open_run_dataset(meta, data_dir, workers=0)
        return torch.cat([xb for xb, _ in _first(src.loader("test", min(n, 256)), n)])[:n]
    except Exception as e:  # noqa: BLE001 - calibration / save-io fall back to random inputs
        log.warning("dataset %s unavailable (%s); using random inputs", meta["dataset"], e)
        return None


def _first(loader, n: int):
    seen = 0
    for xb, yb in loader:
        yield xb, yb
        seen += len(xb)
        if seen >= n:
            return


def _opset(s: str) -> int:
    """``--opset``: the range of :func:`quadexport.exporter.targets.check_opset` (the API's, so both agree)."""
    from quadexport.errors import UsageError
    from quadexport.exporter.targets import check_opset

    try:
        return check_opset(s)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _prepare(model, raw: bool):
    """The module to export (``RawInput`` for ``--input raw``) and the preprocessing metadata of the file."""
    from quadexport.data import run_preprocessing
    from quadexport.errors import UsageError
    from quadexport.data.preprocess import RawInput, preprocessing_metadata
    from quadexport.zoo.tokens import token_input

    if token_input(model) is not None:  # a language model: int64 token ids in, nothing to preprocess
        if raw:
            raise UsageError("--input raw applies to image models; a token model takes int64 token ids as they are")
        return model, {}, None
    try:
        p = run_preprocessing(model.quadexport_meta or {})
    except UsageError:
        if raw:
            raise
        return model, {}, None  # a run without recorded preprocessing: the normalised input, as before
    return (RawInput(model, p) if raw else model), preprocessing_metadata(p, raw_input=raw), p


def _input_kind(proto, flag: str) -> str:
    """``--input``'s value, or ``int64 tokens`` for a token model's file."""
    elem = proto.graph.input[0].type.tensor_type.elem_type
    return "int64 tokens" if elem == 7 else flag  # onnx.TensorProto.INT64


def _report_ops(a: argparse.Namespace, path) -> None:
    import onnx

    from quadexport.exporter.extdata import external_files

    proto = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
    from quadexport.exporter.outputs import structure_of

    data = external_files(path, proto)
    size = f"{path.stat().st_size / 1e6:.2f} MB" + "".join(f" + {d.name} {d.stat().st_size / 1e6:.2f} MB" for d in data)
    print(f"exported {a.out} ({size}, mode {a.mode}, opset {a.opset}"
          f"{', fp16' if a.fp16 else ''}, input {_input_kind(proto, a.input)}"
          f"{', dynamic size' if a.dynamic_size else ''}): "
          + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
    s = structure_of(proto)
    print(f"outputs ({s.task}): {s.summary()}")


def run(a: argparse.Namespace) -> int:
    from pathlib import Path

    from quadexport.runs.atomicfile import StagedFile
    from quadexport.runs.checkpoint import load
    from quadexport.cli.paths import output_file, run_dir
    from quadexport.exporter import check_opset, export

    src = run_dir(a.run_dir, USAGE)
    output_file(a.out, src, USAGE)
    check_opset(a.opset, a.mode)  # mode x opset before the (slow) load
    model = load(src)
    from quadexport.runmeta import RunMeta

    several = RunMeta.of(model).inputs
    if several and (a.save_io or a.input == "raw"):
        from quadexport.errors import UsageError

        raise UsageError(f"{src} takes {len(several)} inputs ({', '.join(i['name'] for i in several)}); "
                         f"{'--save-io' if a.save_io else '--input raw'} takes a model with one input")
    target, meta, prep = _prepare(model, a.input == "raw")
    calib = None
    if a.fp16:
        calib = _test_inputs(model, a.data_dir, 256)
        if calib is not None and prep is not None and a.input == "raw":
            from quadexport.data.preprocess import denormalise

            calib = denormalise(calib, prep)
    # Written under a temporary name and renamed to a.out only once the parity check passed (or --no-check).
    with StagedFile(a.out) as staged:
        path = export(target, staged.path, mode=a.mode, opset=a.opset, fold_bn=not a.no_fold_bn, fp16=a.fp16,
                      calibration_data=calib, metadata=meta, dynamic_size=a.dynamic_size,
                      external_data=True if a.external_data else None)
        _report_ops(a, path)
        if a.mode != "decomposed" and prep is None and getattr(model, "token_input", None) is not None:
            print(f"{a.mode}: the fused kernels take the quadratic feed-forward layers only; attention, embeddings "
                  "and LayerNorm stay standard ONNX ops (int64 token input)")
        if not a.no_check:
            from quadexport.check import check

            # judged against float64; on the run's own test images too when it has a dataset (64 of them: quick),
            # random inputs at its recorded range or statistics
            report = check(path, model, batches=(1, 3, 5), opt_levels=("disable", "all"), dataset=None,
                           dataset_samples=64, data_dir=a.data_dir, verbose=False)
            print(report.format())
            if a.mode == "fused" and not report.env.get("kernel_library"):
                log.warning("fused mode: the kernel library is not built, so the fused kernel never ran (checked "
                            "with the function bodies only); build it with `make kernels` to use and check it")
            if not report.ok:
                staged.discard()
                print(f"parity check failed: {a.out} not written", file=sys.stderr)
                return 1
    from quadexport.zoo.tokens import token_input

    kind = "int64 token ids" if token_input(model) is not None else "raw pixels" if a.input == "raw" else "normalised"
    print(f"wrote {a.out} ({'not checked' if a.no_check else 'parity checked'}; input: {kind})")
    if a.no_check and a.mode == "fused":
        from quadexport.exporter.session import find_kernel_library

        if find_kernel_library() is None:
            log.warning("fused mode: the kernel library is not built; onnxruntime will run the function bodies "
                        "(build it with `make kernels`)")
    if a.save_io:
        _save_io(a, model, target, prep, Path(a.out))
    return 0


def _save_io(a: argparse.Namespace, model, target, prep, out) -> None:
    from quadexport.deploy import save_io

    data = _test_inputs(model, a.data_dir, 4)
    if data is not None and a.input == "raw":
        from quadexport.data.preprocess import denormalise

        data = denormalise(data, prep)
    save_io(target, out, a.save_io, batch=4, data=data)
    print(f"wrote {a.save_io}: input.npy, expected.npy, io.json ({'real' if data is not None else 'random'} "
          "inputs)")


def register(sub: argparse._SubParsersAction) -> None:
    from quadexport.exporter.targets import DEFAULT_OPSET, get_export_target, list_export_targets

    modes = list_export_targets()
    p = sub.add_parser("export", help="export a trained run to ONNX (then check parity)",
                       description="Export RUN_DIR's model to ONNX and check it against torch under onnxruntime "
                                   "(random inputs, batches 1/3/5, ORT_DISABLE_ALL and ORT_ENABLE_ALL). Exit code 1 "
                                   "if the check misses; use `quadexport check` for the full check with test data. "
                                   "The file's metadata says which input it expects (quadexport.input, "
                                   "quadexport.input_formula).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory made by `quadexport train`")
    p.add_argument("out", metavar="OUT.onnx", help="output .onnx file")
    p.add_argument("--mode", choices=modes, default=modes[0],
                   help="; ".join(f"{m}: {get_export_target(m).description}" for m in modes)
                   + f" (default: {modes[0]})")
    p.add_argument("--opset", type=_opset, default=DEFAULT_OPSET,
                   help=f"ai.onnx opset, 18-23 (default: {DEFAULT_OPSET}); 13-17: decomposed only, legacy "
                        f"TorchScript exporter")
    p.add_argument("--input", choices=("normalized", "raw"), default="normalized",
                   help="normalized: the model's own input, (pixels*scale - mean)/std; raw: the training "
                        "preprocessing inside the graph, feed decoded pixels (uint8 or float, 0-255) as they are "
                        "(default: normalized)")
    p.add_argument("--dynamic-size", action="store_true",
                   help="H and W (L for 1-D models) dynamic besides the batch; the check runs at the recorded size "
                        "and twice it (default: the run's fixed input size)")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm nodes (default: folded)")
    p.add_argument("--fp16", action="store_true",
                   help="float16 weights/activations (float32 I/O, fp32 islands) (default: float32)")
    p.add_argument("--data-dir", default=None, help="dataset directory for --fp16 calibration and --save-io "
                                                     "(default: the run's)")
    p.add_argument("--save-io", default=None, metavar="DIR",
                   help="also write DIR/input.npy, expected.npy, io.json (4 test images) for a client's self-check "
                        "(default: none)")
    p.add_argument("--external-data", action="store_true",
                   help="write the weights to OUT.onnx.data beside the file (ONNX external data; move both files "
                        "together) (default: only when they exceed ~1.8 GB, protobuf's limit being 2 GiB)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check after export (default: checked)")
    p.set_defaults(func=run)
