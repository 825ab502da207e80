"""``quadexport check MODEL.onnx RUN_DIR``: parity of a file with its run under any registered runtime
(``--runtime``, default onnxruntime; :mod:`quadexport.runtimes`); exit code 1 on any miss."""

from __future__ import annotations

import argparse

from quadexport.cli.argtypes import OPT_LEVELS, dataset_spec, nonneg_float, pos_int, runtime_help

USAGE = "quadexport check MODEL.onnx RUN_DIR"


def run(a: argparse.Namespace) -> int:
    from quadexport.cli.paths import onnx_file, run_dir
    from quadexport.runs.checkpoint import load

    onnx_path, run = onnx_file(a.onnx, USAGE), run_dir(a.run_dir, USAGE)
    if a.data is not None:
        import logging

        logging.getLogger(__name__).warning("--data is deprecated; use --dataset")
    dataset = a.dataset if a.dataset is not None else a.data
    if not onnx_path.exists():
        from quadexport.errors import UsageError

        if not run.exists():  # both missing: the run is the clearer of the two errors
            load(run)
        raise UsageError(f"{onnx_path} does not exist; export it first: quadexport export {run} {onnx_path}")
    model = load(run)
    from quadexport.check import check

    report = check(onnx_path, model, runtime=a.runtime, provider=a.provider, atol=a.atol, rtol=a.rtol,
                   dataset=dataset, data_dir=a.data_dir, batches=tuple(a.batch or (1, 3, 5, 64)),
                   opt_levels=tuple(a.opt_level), kernel_library=a.kernel_library, seed=a.seed, json_path=a.json,
                   verbose=False)
    print(report.format())
    if a.json:
        print(f"report: {a.json}")
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check an exported ONNX model against its run (non-zero exit on a miss)",
                       description="Run random inputs (at the run's recorded input range or statistics) and the "
                                   "first 512 test images of the run's dataset through a runtime (onnxruntime by "
                                   "default), torch and torch in float64; print one line per setting (opt level, "
                                   "kernel/bodies, precision) × batch with the error against torch float32 "
                                   "(rel_l2), against float64 (vs_fp64) and the model's own float32 floor; exit "
                                   "code 1 if any line misses (vs_fp64 > max(rtol, 4 x floor), max_abs > atol, any "
                                   "NaN/Inf). "
                                   "Raw-input files (export --input raw) are fed raw pixels; int8 QDQ files are "
                                   "judged by top-1 agreement on the dataset. Every output gets its own rows (top-1 "
                                   "for classifier logits, pixel-wise argmax agreement for class maps); a dynamic-size "
                                   "file (export --dynamic-size) is checked at each size it records. --runtime "
                                   "checks under any registered runtime instead (a runtime that cannot run the file "
                                   "- e.g. custom-op nodes - says so).")
    p.add_argument("onnx", metavar="MODEL.onnx", help="the exported .onnx file")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory the model was exported from")
    p.add_argument("--runtime", default="onnxruntime", metavar="NAME", help=runtime_help("check under"))
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="onnxruntime provider (default: cpu)")
    p.add_argument("--atol", type=nonneg_float, default=None, help="max abs difference (default: not checked)")
    p.add_argument("--rtol", type=nonneg_float, default=None,
                   help="max relative L2 error against float64 where the model's own float32 floor is below "
                        "rtol/4 (default: 1e-5 for float32, 1e-2 for float16 models)")
    p.add_argument("--dataset", type=dataset_spec, default=None, metavar="DATASET",
                   help="dataset for the real-data check (default: the run's own, with its subsets and "
                        "normalisation)")
    p.add_argument("--data", type=dataset_spec, default=None, help=argparse.SUPPRESS)  # deprecated: --dataset
    p.add_argument("--data-dir", default=None, help="dataset directory (default: the run's)")
    p.add_argument("--batch", "--batches", dest="batch", type=pos_int, nargs="+", default=None,
                   metavar="N", help="batch sizes of the random inputs (default: 1 3 5 64)")
    p.add_argument("--opt-level", "--opt-levels", dest="opt_level", nargs="+", choices=OPT_LEVELS,
                   default=["disable", "all"],
                   help="graph optimisation levels, for runtimes that have them (onnxruntime, cpp)")
    p.add_argument("--kernel-library", choices=("auto", "always", "never"), default="auto",
                   help="quadexport-domain models: auto = function bodies and, if built, the kernel (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument("--json", default=None, help="also write the report as JSON (default: none)")
    p.set_defaults(func=run)
