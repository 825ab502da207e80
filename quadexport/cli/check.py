"""``quadexport check OUT.onnx RUN_DIR``: onnxruntime-vs-torch parity; exit code 1 on any miss."""

from __future__ import annotations

import argparse

from quadexport.cli.argtypes import nonneg_float, pos_int


def run(a: argparse.Namespace) -> int:
    from quadexport.check import check
    from quadexport.checkpoint import load

    model = load(a.run_dir)
    report = check(a.onnx, model, provider=a.provider, atol=a.atol, rtol=a.rtol, dataset=a.data,
                   data_dir=a.data_dir, batches=tuple(a.batches), opt_levels=tuple(a.opt_levels),
                   kernel_library=a.kernel_library, seed=a.seed, json_path=a.json, verbose=False)
    print(report.format())
    if a.json:
        print(f"report: {a.json}")
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    from quadexport.exporter.session import OPT_LEVELS

    p = sub.add_parser("check", help="check an exported ONNX model against its run (non-zero exit on a miss)",
                       description="Run random inputs (and the first 512 test images of the run's dataset) through "
                                   "onnxruntime and torch; print one line per opt level × batch; exit code 1 if "
                                   "any line misses (rel_l2 > rtol, max_abs > atol, NaN/Inf torch does not have).")
    p.add_argument("onnx", help="the exported .onnx file")
    p.add_argument("run_dir", help="run directory the model was exported from")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--atol", type=nonneg_float, default=None, help="max abs difference (default: not checked)")
    p.add_argument("--rtol", type=nonneg_float, default=None,
                   help="max relative L2 error (default 1e-5 for float32, 1e-2 for float16 models)")
    p.add_argument("--data", default=None, help="dataset for the real-data check (default: the run's dataset)")
    p.add_argument("--data-dir", default=None, help="dataset directory")
    p.add_argument("--batches", type=pos_int, nargs="+", default=[1, 3, 5, 64], help="batch sizes (default 1 3 5 64)")
    p.add_argument("--opt-levels", nargs="+", choices=OPT_LEVELS,
                   default=["disable", "all"], help="onnxruntime graph optimisation levels (default disable all)")
    p.add_argument("--kernel-library", choices=("auto", "always", "never"), default="auto",
                   help="quadexport-domain models: auto = function bodies and, if built, the kernel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the report as JSON")
    p.set_defaults(func=run)
