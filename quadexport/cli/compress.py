"""``quadexport compress RUN_DIR --out RUN_DIR2``: prune quadratic terms (and/or quantise to int8) of a trained run.

Importing this module (the CLI does, for every command) registers the cheap neuron types ``fan_pw`` and ``fan_dw``,
so ``quadexport train --neuron fan_pw`` and loading such runs work from the command line.
"""

from __future__ import annotations

import argparse

from quadexport.cli.argtypes import nonneg_float, nonneg_int, pos_int, positive_float


EXIT_MISSED = 3
"""Exit status when the compressed run was written but a target (``--max-drop``, ``--target-ratio``) was missed."""


def run(a: argparse.Namespace) -> int:
    from quadexport.compress import CompressConfig, compress

    cfg = CompressConfig(threshold=a.prune_threshold, target_ratio=a.target_ratio, cost=a.cost, select=a.select,
                         max_drop=None if a.max_drop < 0 else a.max_drop, val_samples=a.val_samples,
                         quantize=a.quantize, keep_fp32=a.int8_keep_fp32, finetune_epochs=a.finetune_epochs,
                         finetune_lr=a.finetune_lr, calib_samples=a.calib_samples, align=a.align, split=a.split,
                         shortcut=a.shortcut, drop_branches=not a.no_drop_branches, bn_recalibrate=a.bn_recalibrate,
                         bench=not a.no_bench, batches=tuple(a.batches), threads=a.threads,
                         min_seconds=a.min_seconds, twin=a.twin, data_dir=a.data_dir, check=not a.no_check,
                         overwrite=a.overwrite, task_loss=a.task_loss)
    r = compress(a.run_dir, a.out, cfg)
    acc, v, t = r.accuracy, r.validation, r.targets
    if acc["final"] is None:  # not a classifier: the task loss instead of an accuracy
        print(f"validation {v['task_loss']} {v.get('final_loss', float('nan')):.4g} (original "
              f"{v['original_loss']:.4g}; no accuracy: not a classifier); MACs ×{r.macs['compressed_ratio']:.2f} of "
              f"the ReLU twin")
    else:
        print(f"test accuracy {100 * acc['final']:.2f}% (original {100 * acc['original']:.2f}%, "
              f"{acc['delta_pp']:+.2f} pp); MACs ×{r.macs['compressed_ratio']:.2f} of the ReLU twin")
    if v.get("samples") and v.get("final") is not None:
        print(f"validation accuracy {100 * v['final']:.2f}% (original {100 * v['original']:.2f}%, "
              f"{-t['val_drop_pp']:+.2f} pp; budget --max-drop {t['max_drop_pp']})")
    for x in r.latency_ratios:
        s = (f"batch {x['batch']}: latency ×{x['compressed_ratio']:.2f} of the ReLU twin "
             f"(original ×{x['original_ratio']:.2f})")
        if "compressed_int8_ratio" in x:
            s += f", int8 ×{x['compressed_int8_ratio']:.2f}"
        print(s)
    for g in r.unresolved:
        print(f"left unpermuted (its layers kept whole or prefix-split): {g}")
    if r.parity is not None and not r.parity["ok"]:
        print("parity check FAILED (parity.json)")
        return 1
    for m in r.missed:
        print(f"MISSED {m}")
    return EXIT_MISSED if r.missed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="prune quadratic terms / quantise a trained run into a new run dir",
                       description="Calibrate each quadratic output channel's contribution on training images, make "
                                   "the small ones linear (quadratic channels permuted to the front so onnxruntime "
                                   "computes g/b only for them), optionally fine-tune and quantise to int8. Writes a "
                                   "run dir that export/check/bench accept, with compress_report.json/.md.")
    p.add_argument("run_dir", help="trained quadratic run dir")
    p.add_argument("--out", required=True, help="new run dir")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prune-threshold", type=nonneg_float, default=None,
                   help="make channels linear whose quadratic score (residual RMS of the best linear refit / "
                        "channel std) is below this; 0 changes nothing (default 0.05 unless --target-ratio or only "
                        "--quantize is given)")
    g.add_argument("--target-ratio", type=positive_float, default=None,
                   help="keep quadratic terms only where they fit a cost ratio vs the ReLU twin of at most this (by "
                        "default the measured onnxruntime latency ratio, see --cost and --select)")
    p.add_argument("--cost", choices=("macs", "latency"), default="latency",
                   help="cost for --target-ratio: measured onnxruntime latency ratio (default) or MAC ratio")
    p.add_argument("--select", choices=("auto", "layers", "threshold"), default="auto",
                   help="how --target-ratio is met: 'layers' measures each layer's latency cost and validation-loss "
                        "benefit and keeps the best benefit per cost; 'threshold' bisects one global channel "
                        "threshold; 'auto' (default): layers for --cost latency, threshold for --cost macs")
    p.add_argument("--max-drop", type=float, default=0.3,
                   help="accuracy budget in percentage points on a validation split carved from the training data "
                        "(default 0.3; negative: no budget); the command exits 3 and says so when it is missed")
    p.add_argument("--val-samples", type=pos_int, default=1000,
                   help="validation split size (at most a fifth of the training data; default 1000)")
    p.add_argument("--quantize", choices=("int8",), default=None, help="also write model.int8.onnx (static QDQ)")
    p.add_argument("--int8-keep-fp32", choices=("none", "products", "quadratic"), default="none",
                   help="int8: keep x*x, r*g and their sum fp32 (products), also the x*x conv (quadratic)")
    p.add_argument("--finetune-epochs", type=nonneg_int, default=1,
                   help="fine-tune with the run's recipe (default 1 epoch; 0: off)")
    p.add_argument("--finetune-lr", type=positive_float, default=None, help="fine-tuning LR (default: run's LR x 0.1)")
    p.add_argument("--calib-samples", type=pos_int, default=1024, help="calibration images (default 1024)")
    p.add_argument("--align", type=pos_int, default=None,
                   help="round quadratic channel counts of conv layers up to this (default: NCHWc block, 16 on "
                        "AVX-512, 8 otherwise)")
    p.add_argument("--split", choices=("conv", "slice"), default="conv",
                   help="mixed layers: separate convs for the quadratic/linear channels + Concat (default) or one "
                        "conv + Slice + Concat")
    p.add_argument("--shortcut", choices=("auto", "conv"), default="auto",
                   help="ResNet option-A shortcuts: PermShortcut only where streams are permuted (auto) or always the "
                        "exact 1x1 conv that keeps onnxruntime's NCHWc layout (conv; the report then also times the "
                        "ReLU twin with the same rewrite)")
    p.add_argument("--bn-recalibrate", action="store_true",
                   help="re-estimate the BatchNorm statistics on the calibration images after pruning (helps when "
                        "most channels are linearised)")
    p.add_argument("--no-drop-branches", action="store_true", help="never drop a layer's whole b or g branch")
    p.add_argument("--twin", default=None, metavar="RUN_DIR", help="trained ReLU twin run (accuracy in the report)")
    p.add_argument("--no-bench", action="store_true", help="skip the latency measurement")
    p.add_argument("--batch", "--batches", dest="batches", type=pos_int, nargs="+", default=[1, 64], help="latency batch sizes (default 1 64)")
    p.add_argument("--threads", type=pos_int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--min-seconds", type=positive_float, default=1.0, help="timed seconds per model and batch")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument("--data-dir", default=None,
                   help="built-in dataset location override (imagefolder:/npz: runs reopen the path they were "
                        "trained on)")
    p.add_argument("--task-loss", default=None, metavar="NAME",
                   help="what to measure and fine-tune with instead of accuracy and cross-entropy on class labels; "
                        "required for a run that is not a classifier (dense maps, several heads). distill-mse: mean "
                        "squared error of every output against the uncompressed model's (no labels; a run without "
                        "a dataset gets random inputs at its recorded input statistics)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (the old one stays intact until the new one is complete)")
    p.set_defaults(func=run)
