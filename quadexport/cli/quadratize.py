"""``quadexport quadratize RUN_DIR --out RUN2``: turn a trained run's model into a quadratic one that computes the
same function (quadratic terms at zero), written as a new run dir ready for ``quadexport train --from RUN2``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from quadexport.cli.argtypes import pos_int


def _run_files(src: Path, q: Any, report: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(checkpoint meta, config.json, metrics.json) of the quadratized run; the source's are kept as ``source``."""
    from quadexport.rundir import CONFIG, METRICS, read_json

    meta = dict(q.quadexport_meta)
    meta["source"] = {**meta.get("source", {}), "run": str(src)}
    meta["quadratize"] = report.to_dict()
    src_config = {k: v for k, v in (read_json(src / CONFIG) or {}).items() if k != "run_id"}
    src_metrics = {k: v for k, v in (read_json(src / METRICS) or {}).items() if k != "run_id"}
    cfg = q.quadexport_config
    config = {"command": "quadratize", "model": cfg["name"], "neuron": cfg["neuron"], "from": str(src),
              "rank": report.rank, "source": src_config}
    metrics = {"model": cfg["name"], "neuron": cfg["neuron"], "dataset": meta.get("dataset"), "epochs": [],
               "quadratize": report.to_dict(), "source": src_metrics}
    return meta, config, metrics


def run(a: argparse.Namespace) -> int:
    from quadexport.checkpoint import load, save_checkpoint, write_json
    from quadexport.errors import UsageError
    from quadexport.quadratize import quadratize
    from quadexport.rundir import CONFIG, METRICS, open_run

    src = Path(a.run_dir)
    model = load(src)
    q, report = quadratize(model, a.neuron, include=a.include, exclude=a.exclude, rank=a.rank, return_report=True)
    if not report.converted:
        raise UsageError(f"no layer of {src} was quadratized ({len(report.skipped)} conv/linear layers left alone); "
                         f"name some with --include")
    meta, config, metrics = _run_files(src, q, report)
    with open_run(a.out, "overwrite" if a.overwrite else "new", resumable=False) as out:
        with out.saving():
            write_json(out.path / METRICS, out.stamp(metrics))
            write_json(out.path / CONFIG, out.stamp(config))
            save_checkpoint(out.path, q, meta, None, 0, {}, run_id=out.run_id)
            out.commit()
    print(report.summary())
    for s in report.skipped:
        print(f"  kept {s.name} ({s.kind}): {s.reason}")
    print(f"{src} -> {a.out}; fine-tune with: quadexport train --from {a.out} --epochs E --out RUN3")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quadratize", help="make a trained run's model quadratic (unchanged at init) as a new run",
                       description="Turn the conv/linear layers of a trained run's model into quadratic layers "
                       "that compute exactly the same function (trained weights in the linear branch, quadratic "
                       "terms at zero; stem and classifier head stay conventional unless --include names them). "
                       "Example: quadexport quadratize runs/r18 --out runs/r18-fan && quadexport train --from "
                       "runs/r18-fan --epochs 5 --train-only --out runs/r18-fan-ft")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the trained run (any model: zoo, torchvision:, timm:)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--neuron", default="fan", help="quadratic neuron type (default fan; quadexport info neurons)")
    p.add_argument("--rank", type=pos_int, default=None, help="rank of the quadratic terms (neuron lowrank)")
    p.add_argument("--include", nargs="+", default=None, metavar="GLOB",
                   help="layers to convert (globs over module names, e.g. 'layer*' 'features.*'); default: all but "
                        "the stem and the classifier head")
    p.add_argument("--exclude", nargs="+", default=None, metavar="GLOB", help="layers to leave alone")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.set_defaults(func=run)
