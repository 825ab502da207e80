"""``quadexport quadratize RUN_DIR --out RUN2``: turn a trained run's model into a quadratic one that computes the
same function (quadratic terms at zero), written as a new run dir ready for ``quadexport train --from RUN2``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from quadexport.cli.argtypes import dataset_spec, image_size, model_arg, pos_int


def _run_files(src: Path, q: Any, report: Any, weights: str | None
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(checkpoint meta, config.json, metrics.json) of the quadratized run; the source's are kept as ``source``."""
    from quadexport.runs.rundir import CONFIG, METRICS, read_json

    meta = dict(q.quadexport_meta)
    origin = {"run": str(src)} if src.exists() else {"model": str(src)}
    meta["source"] = {**meta.get("source", {}), **origin, **({"weights": str(weights)} if weights else {})}
    meta["quadratize"] = report.to_dict()
    src_config = {k: v for k, v in (read_json(src / CONFIG) or {}).items() if k != "run_id"}
    src_metrics = {k: v for k, v in (read_json(src / METRICS) or {}).items() if k != "run_id"}
    cfg = q.quadexport_config
    config = {"command": "quadratize", "model": cfg["name"], "neuron": cfg["neuron"], "from": str(src),
              "rank": report.rank, "source": src_config}
    metrics = {"model": cfg["name"], "neuron": cfg["neuron"], "dataset": meta.get("dataset"), "epochs": [],
               "quadratize": report.to_dict(), "source": src_metrics}
    return meta, config, metrics


def _from_name(a: argparse.Namespace) -> Any:
    """SOURCE given as a model name: build it (ReLU) for ``--dataset``, load ``--weights``; meta as a run has it."""
    from quadexport.data import DataOptions, open_dataset
    from quadexport.errors import UsageError
    from quadexport.training.loop import TrainConfig
    from quadexport.transforms import create_model
    from quadexport.transforms.weights import load_weights

    if a.dataset is None and a.input_shape is None:
        raise UsageError(f"{a.source} is not a run dir; building the model needs --dataset, or --input-shape C H W "
                         f"for a model without one (segmentation, denoising...), and --weights FILE for its weights")
    if a.dataset is None:
        return _without_data(a)
    data = open_dataset(a.dataset, DataOptions(data_dir=a.data_dir, image_size=a.image_size))
    shape, kw = data.input_shape, dict(a.model_arg or [])
    model = create_model(a.source, neuron="relu", num_classes=data.num_classes, in_channels=shape[0],
                         input_size=tuple(shape[1:]), **kw)
    if a.weights:
        load_weights(model, a.weights)
    tc = TrainConfig(model=a.source, neuron="relu", dataset=a.dataset, out=str(a.out), data_dir=a.data_dir,
                     image_size=a.image_size, weights=a.weights, model_args=kw)
    prep = data.preprocessing
    model.quadexport_meta = {"dataset": a.dataset, "input_shape": list(shape), "num_classes": data.num_classes,
                             "normalization": prep.normalization(), "preprocessing": prep.to_dict(),
                             "train_config": tc.to_dict()}
    return model


def _without_data(a: argparse.Namespace) -> Any:
    """SOURCE a model name with ``--input-shape`` and no dataset: built for that shape (``--model-arg num_classes=N``
    sizes its head, default 10); the run has no data, so ``check`` feeds random inputs."""
    from quadexport.transforms import create_model
    from quadexport.transforms.weights import load_weights

    kw = dict(a.model_arg or [])
    shape = tuple(a.input_shape)
    num_classes = int(kw.pop("num_classes", 10))
    size = tuple(shape[1:]) if len(shape) == 3 else shape[-1]
    model = create_model(a.source, neuron="relu", num_classes=num_classes, in_channels=shape[0], input_size=size,
                         **kw)
    if a.weights:
        load_weights(model, a.weights)
    model.quadexport_meta = {"input_shape": list(shape), "num_classes": num_classes}
    return model


def run(a: argparse.Namespace) -> int:
    from quadexport.runs.checkpoint import load
    from quadexport.errors import UsageError
    from quadexport.transforms.quadratizer import quadratize
    from quadexport.runs.rundir import open_run
    from quadexport.runs.write import write_run
    from quadexport.transforms.weights import load_weights

    src = Path(a.source)
    if src.exists():
        if a.dataset is not None or a.input_shape is not None:
            raise UsageError(f"{src} is a run dir: it brings its own data and input shape; drop "
                             f"{'--dataset' if a.dataset is not None else '--input-shape'}")
        model = load(src)
        if a.weights:
            load_weights(model, a.weights)
    else:
        model = _from_name(a)
    q, report = quadratize(model, a.neuron, include=a.include, exclude=a.exclude, rank=a.rank, return_report=True)
    if not report.converted:
        raise UsageError(f"no layer of {src} was quadratized ({len(report.skipped)} conv/linear layers left alone); "
                         f"name some with --include")
    meta, config, metrics = _run_files(src, q, report, a.weights)
    if meta.get("input_shape"):
        from quadexport.exporter.outputs import run_meta

        meta.update(run_meta(q, meta["input_shape"]))  # task and outputs, for `info RUN`, check and compress
    with open_run(a.out, "overwrite" if a.overwrite else "new", resumable=False) as out:
        write_run(out, q, meta, config=config, metrics=metrics)
    print(report.summary())
    unselected = [s for s in report.skipped if s.reason in ("not selected by include", "excluded")]
    for s in report.skipped:
        if s not in unselected:
            print(f"  kept {s.name} ({s.kind}): {s.reason}")
    if unselected:
        print(f"  kept {len(unselected)} layer(s) not selected by --include/--exclude")
    print(f"{src} -> {a.out}; fine-tune with: quadexport train --from {a.out} --epochs E --out RUN3")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quadratize", help="make a trained run's model quadratic (unchanged at init) as a new run",
                       description="Turn the conv/linear layers of a trained run's model into quadratic layers "
                       "that compute exactly the same function (trained weights in the linear branch, quadratic "
                       "terms at zero; stem and classifier head stay conventional unless --include names them). "
                       "Example: quadexport quadratize runs/r18 --out runs/r18-fan && quadexport train --from "
                       "runs/r18-fan --epochs 5 --train-only --out runs/r18-fan-ft. Weights trained elsewhere: "
                       "quadexport quadratize torchvision:resnet18 --weights r18.pt --dataset imagefolder:data "
                       "--out runs/r18-fan")
    p.add_argument("source", metavar="SOURCE",
                   help="a trained run dir (any model: zoo, torchvision:, timm:), or a model name with --dataset "
                        "and --weights FILE")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="state dict file with the trained weights (weights-only load; nothing is downloaded)")
    p.add_argument("--dataset", default=None, type=dataset_spec, metavar="DATASET",
                   help="for a model name: the data it was trained on (digits, imagefolder:PATH, npz:FILE)")
    p.add_argument("--input-shape", type=pos_int, nargs="+", default=None, metavar="N",
                   help="for a model name without a dataset (segmentation, denoising, ...): the per-sample input "
                        "shape, e.g. 3 64 64; --model-arg num_classes=N sizes the head")
    p.add_argument("--data-dir", default=None, help="for a model name: dataset location override")
    p.add_argument("--image-size", type=image_size, default=None, metavar="H[xW]",
                   help="for a model name: the input size it was trained at (images resized with PIL bilinear)")
    p.add_argument("--model-arg", action="append", type=model_arg, default=None, metavar="KEY=VALUE",
                   help="for a model name: builder option, repeatable")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--neuron", default="fan", help="quadratic neuron type (default fan; quadexport info neurons)")
    p.add_argument("--rank", type=pos_int, default=None, help="rank of the quadratic terms (neuron lowrank)")
    p.add_argument("--include", nargs="+", default=None, metavar="GLOB",
                   help="layers to convert (globs over module names, e.g. 'layer*' 'features.*'); default: all but "
                        "the stem and the classifier head")
    p.add_argument("--exclude", nargs="+", default=None, metavar="GLOB", help="layers to leave alone")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.set_defaults(func=run)
