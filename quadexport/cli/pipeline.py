"""``quadexport pipeline RECIPE.toml``: train → export → check → bench → report, from a ``models/`` recipe."""

from __future__ import annotations

import argparse


def run(a: argparse.Namespace) -> int:
    from quadexport.cli.experiments import echo_logs
    from quadexport.pipeline import run_pipeline

    with echo_logs("quadexport.pipeline"):  # the stage lines ("== train ...") on stdout, as before
        s = run_pipeline(a.recipe, out=a.out, resume=True, overwrite=a.overwrite, skip_bench=a.skip_bench)
    print()
    for m in s.models:
        print(f"{m.model:>10s} {m.neuron:>6s}: test accuracy {100 * m.test_acc:.2f}%")
    if len(s.models) > 1:
        q, r = s.models[0], s.models[1]
        print(f"quadratic - ReLU twin: {100 * (q.test_acc - r.test_acc):+.2f} pp")
    for x in s.ratios:
        print(f"latency {x['quadratic']} / {x['baseline']} ({x.get('mode', '?')}) at batch {x['batch']}: "
              f"{x['latency_ratio']:.2f}x "
              f"(MAC ratio {x['mac_ratio']:.2f}x)")
    print(f"parity: {'passed' if s.parity_ok else 'FAILED'}; report: {s.report}")
    return 0 if s.parity_ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run a models/*.toml recipe end to end (train, export, check, bench)",
                       description="Train the recipe's quadratic model and its ReLU baselines, export the quadratic "
                                   "model to ONNX, check onnxruntime parity, benchmark latency against the baselines "
                                   "and write a report folder (summary.md, summary.json, parity.json, bench/). "
                                   "Rerunning it reuses finished runs and resumes a training that was interrupted. "
                                   "Example: quadexport pipeline models/digits-demo.toml")
    p.add_argument("recipe", help="recipe TOML, e.g. models/digits-demo.toml")
    p.add_argument("--out", default=None, help="report folder (default: reports/<recipe name>)")
    p.add_argument("--overwrite", "--fresh", action="store_true", dest="overwrite",
                   help="retrain every model, replacing its run dir (default: off; finished runs are reused and "
                        "interrupted ones resume from their last epoch)")
    p.add_argument("--skip-bench", action="store_true", help="stop after the parity check (default: off)")
    p.set_defaults(func=run)
