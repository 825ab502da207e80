"""``quadexport adopt FILE.py:BUILDER [--weights CKPT] --input-shape C,H,W --out RUN``: a quadratic network trained
with research code (quadratic neurons written inline in ``forward``) turned into a run dir of quadexport layers.

The user's file is executed (it is imported, as ``python -c "import model"`` would), its builder called with the
``--model-arg`` options, the checkpoint loaded in any common layout (:mod:`quadexport.transforms.statedict`), and
:func:`quadexport.adopt` rewrites the neurons it recognises. The run dir keeps the file's text (in its checkpoint
and as a copy beside it, with its sha256), so ``quadexport.load(RUN)`` rebuilds the model in any process, from
anywhere, by running that code again (:mod:`quadexport.zoo.usercode`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from quadexport.cli.argtypes import dataset_spec, image_size, model_arg
from quadexport.runmeta import config_dict

log = logging.getLogger(__name__)



def input_shape(s: str) -> tuple[int, ...]:
    """``C,H,W`` (or ``C,L`` for Conv1d models, ``F`` for an MLP), integers >= 1."""
    try:
        dims = tuple(int(v) for v in s.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{s} must be C,H,W (e.g. 3,32,32), or C,L for a Conv1d model")
    return dims


def input_range(s: str) -> tuple[float, float]:
    """``LO,HI``: finite numbers, ``LO < HI``."""
    import math

    try:
        lo, hi = (float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s} must be LO,HI (e.g. 0,1)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"{s}: LO and HI must be finite with LO < HI")
    return lo, hi


def _build(a: argparse.Namespace) -> tuple[Any, Any, dict[str, Any], Any]:
    """(the user's model with its trained weights, its source, the builder options, what the checkpoint held)."""
    from quadexport.transforms.statedict import load_into
    from quadexport.zoo.usercode import build_user_model, parse_target, read_source

    path, builder = parse_target(a.target)
    src = read_source(path)
    kwargs = dict(a.model_arg or [])
    log.info("running %s (your code) and calling %s(%s)", path, builder,
             ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
    model = build_user_model(src, builder, kwargs)
    loaded = None
    if a.weights:
        loaded = load_into(model, a.weights, trust=a.trust_checkpoint)
        where = f"under {loaded.container!r}" if loaded.container else "bare"
        strip = f", prefix {' + '.join(loaded.stripped)} stripped" if loaded.stripped else ""
        log.info("loaded %d tensors from %s (state dict %s%s)", len(loaded.state), a.weights, where, strip)
    else:
        log.warning("no --weights: the run keeps the weights %s:%s initialises", path.name, builder)
    return model.eval(), src, kwargs, loaded


def _data(a: argparse.Namespace) -> tuple[Any, list[tuple[int, ...]]]:
    """(the opened --dataset or None, the input shapes: each --input-shape, else the dataset's)."""
    from quadexport.errors import UsageError

    shapes = [tuple(s) for s in a.input_shape or []]
    if a.input_range and len(a.input_range) not in (1, max(len(shapes), 1)):
        raise UsageError(f"{len(a.input_range)} --input-range for {len(shapes)} --input-shape: give one for every "
                         f"input or one per --input-shape, in the same order")
    if a.dataset is None:
        if not shapes:
            raise UsageError("give --input-shape C,H,W (the shape of one input; once per input of forward), or "
                             "--dataset NAME")
        return None, shapes
    if len(shapes) > 1:
        raise UsageError(f"--dataset feeds one input, but {len(shapes)} --input-shape were given; drop --dataset "
                         f"(random inputs verify a model with several inputs)")
    from quadexport.data import DataOptions, open_dataset

    data = open_dataset(a.dataset, DataOptions(data_dir=a.data_dir, image_size=a.image_size, workers=0))
    shape = tuple(data.input_shape)
    if shapes and shapes[0] != shape:
        raise UsageError(f"--input-shape {','.join(map(str, shapes[0]))} disagrees with {a.dataset}'s inputs "
                         f"{','.join(map(str, shape))}; drop --input-shape")
    return data, [shape]


def _first_batch(data: Any, n: int = 16) -> Any:
    """The first ``n`` test inputs of the dataset (the real batch adopt verifies with)."""
    from torch.utils.data import DataLoader

    return next(iter(DataLoader(data.test, batch_size=n, shuffle=False, num_workers=data.workers)))[0]


def _on_data(adopted: Any, report: Any, data: Any, classifier: bool) -> tuple[float | None, Any]:
    """(test accuracy of the adopted model (``None`` unless ``classifier``), the float64 verdict of the first test
    batch: :class:`quadexport.parity.ConversionCheck`)."""
    import torch
    from torch.utils.data import DataLoader

    from quadexport.training.loop import evaluate_batches

    loader = DataLoader(data.test, batch_size=256, shuffle=False, num_workers=data.workers)
    diff = report.verify_fp64(next(iter(loader))[0], f"{data.name}'s first test batch")
    if not classifier:  # no accuracy to measure for other tasks: the real batch still verifies the adoption
        return None, diff
    return float(evaluate_batches(adopted, loader, torch.device("cpu"))[1]), diff


def _configure(adopted: Any, src: Any, builder: str, kwargs: dict[str, Any], inputs: Any, x: Any) -> None:
    """Give the adopted model the ``quadexport_config`` that :func:`quadexport.transforms.create_model` rebuilds it
    from, and check that it does: rebuilt and loaded strictly, it must give bitwise the same outputs on ``x`` (a
    tuple of batches, one per input)."""
    import torch

    from quadexport.errors import QuadexportError
    from quadexport.transforms import create_model
    from quadexport.zoo.usercode import model_name

    from quadexport.exporter.outputs import flatten

    shape = inputs.shapes[0]
    with torch.no_grad():
        y = flatten(adopted(*x))  # any output structure: its tensors in torch's order
    num_classes = int(y[0].shape[-1]) if len(y) == 1 and y[0].dim() == 2 else 0  # a classifier's logits
    adopt_cfg = config_dict(adopted)
    cfg = {"name": model_name(src.filename, builder), "neuron": adopt_cfg.get("neuron", "fan"),
           "num_classes": num_classes, "in_channels": int(shape[0]), "input_size": list(shape[1:]),
           "source": src.to_dict(), "builder": builder, "model_args": kwargs, "adopt": adopt_cfg["adopt"]}
    adopted.quadexport_config = cfg
    with torch.random.fork_rng(devices=[]):
        again = create_model(**{k: v for k, v in cfg.items()})
    again.load_state_dict(adopted.state_dict(), strict=True)
    with torch.no_grad():
        z = flatten(again.eval()(*x))
        if len(z) != len(y) or not all(torch.equal(a, b) for a, b in zip(z, y)):
            raise QuadexportError(f"{src.filename}:{builder} rebuilt from the recorded source and adopt spec does "
                                  f"not reproduce the adopted model (does the builder depend on state outside "
                                  f"the file?); nothing was written")


def _meta(a: argparse.Namespace, x: Any, num_classes: int, data: Any, src: Any,
          loaded: Any, report: Any) -> dict[str, Any]:
    from quadexport.exporter.outputs import model_structure

    one = tuple(t[:1] for t in x)  # one sample, as the recorded output shapes always were
    structure = model_structure(report.adopted, one if len(one) > 1 else one[0])  # the run's task and outputs
    meta: dict[str, Any] = {**report.inputs.meta(), "num_classes": num_classes,
                            "source": {"file": str(Path(a.target.rpartition(":")[0]).resolve()),
                                       "sha256": src.sha256, "weights": str(a.weights) if a.weights else None,
                                       "container": loaded.container if loaded else None,
                                       "stripped": loaded.stripped if loaded else []},
                            "adopt": report.to_dict(), "task": structure.task, "outputs": structure.to_dict()}
    if data is not None:
        prep = data.preprocessing
        meta.update(dataset=a.dataset, normalization=prep.normalization(), preprocessing=prep.to_dict(),
                    train_config={"dataset": a.dataset, "data_dir": a.data_dir, "seed": 0,
                                  "image_size": list(a.image_size) if a.image_size else None,
                                  "train_subset": None, "test_subset": None})
    return meta


def _write(a: argparse.Namespace, adopted: Any, meta: dict[str, Any], src: Any) -> None:
    """The run dir, staged and swapped in whole (:func:`quadexport.runs.rundir.open_run`)."""
    from quadexport.runs.rundir import open_run
    from quadexport.runs.write import write_run

    cfg = adopted.quadexport_config
    config = {"command": "adopt", "model": cfg["name"], "neuron": cfg["neuron"], "target": a.target,
              "model_file": src.filename, "sha256": src.sha256, "builder": cfg["builder"],
              "model_args": cfg["model_args"], "weights": str(a.weights) if a.weights else None,
              "trust_checkpoint": bool(a.trust_checkpoint), "input_shape": meta["input_shape"],
              **{k: meta[k] for k in ("inputs", "input_range") if k in meta}, "dataset": a.dataset}
    metrics = {"model": cfg["name"], "neuron": cfg["neuron"], "dataset": a.dataset, "epochs": [],
               "adopt": meta["adopt"], **({"test_acc": meta["test_acc"]} if "test_acc" in meta else {})}
    with open_run(a.out, "overwrite" if a.overwrite else "new", resumable=False) as out:
        write_run(out, adopted, meta, config=config, metrics=metrics, files={src.filename: src.text})


def _print_report(report: Any) -> None:
    """The summary line, each adopted neuron (source modules -> type, BatchNorms folded), the layers that already
    were quadexport layers and each form left alone."""
    print(report.summary())
    inputs = report.inputs
    if inputs is not None and (inputs.several or any(r is not None for r in inputs.ranges)):
        print(f"  inputs: {', '.join(s.describe() for s in inputs.specs)}")
    if report.already:
        more = f" (+{len(report.already) - 5} more)" if len(report.already) > 5 else ""
        print(f"  already quadexport: {', '.join(report.already[:5])}{more}")
    for n in report.neurons:
        folded = [b for b in n.bn.values() if b]
        print(f"  {n.name}: {' + '.join(f'{r}={p}' for r, p in n.branches.items())} -> {n.type}"
              f"{f' (folded {len(folded)} BatchNorm)' if folded else ''}")
    for s in report.skipped:
        print(f"  left alone: {', '.join(s.modules)}: {s.reason}")


def run(a: argparse.Namespace) -> int:
    from quadexport.transforms.adopter import adopt
    from quadexport.errors import QuadexportError, UsageError

    data, shapes = _data(a)
    model, src, kwargs, loaded = _build(a)
    real = _first_batch(data) if data is not None else None  # with --dataset, adopt verifies on real inputs
    ranges = [tuple(r) for r in a.input_range] if a.input_range else None
    adopted, report = adopt(model, example_input=real, input_shape=shapes if len(shapes) > 1 else shapes[0],
                            input_range=ranges[0] if ranges and len(ranges) == 1 else ranges, include=a.include,
                            exclude=a.exclude, return_report=True)
    if not report.neurons and not report.already:
        reasons = "; ".join(f"{', '.join(s.modules)}: {s.reason}" for s in report.skipped[:3])
        raise UsageError(f"found no quadratic neuron to adopt and no quadexport layer in {a.target}"
                         f"{f' ({reasons})' if reasons else ''}; nothing was written")
    x = (real,) if real is not None else report.inputs.example(2)
    _configure(adopted, src, kwargs=kwargs, builder=a.target.rpartition(":")[2], inputs=report.inputs, x=x)
    meta = _meta(a, x, adopted.quadexport_config["num_classes"], data, src, loaded, report)
    _print_report(report)
    if data is not None:
        acc, res = _on_data(adopted, report, data, classifier=meta["task"] == "classification")
        meta.update(max_rel_diff_test_batch=res.max_rel_diff, err_fp64_test_batch=res.err_fp64,
                    floor_test_batch=res.floor, rule_test_batch=res.verdict.rule)
        if acc is not None:
            meta["test_acc"] = acc
        if not res.ok:
            raise QuadexportError(f"the adopted model differs from yours on {a.dataset}'s first test batch "
                                  f"({res.summary()}); nothing was written")
        print(f"on {a.dataset}'s test set: {'' if acc is None else f'accuracy {100 * acc:.2f}%, '}"
              f"{res.summary()} against your model in float64 (first batch)")
    _write(a, adopted, meta, src)
    print(f"{a.target} -> {a.out} (keeps a copy of {src.filename}, sha256 {src.sha256[:12]}...; loading the run "
          f"runs it)")
    print(f"next: quadexport export {a.out} model.onnx --mode fused && quadexport bench {a.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adopt", help="turn a quadratic network written with research code (neurons inline in forward) into a run",
        description="Import FILE.py (THIS RUNS YOUR CODE, as importing it would), build the model with "
                    "BUILDER(**--model-arg), load --weights, find the quadratic neurons written inline in its "
                    "forward (conv_r(x) * conv_g(x) + conv_b(x.pow(2)), BN per branch, compact, T2, T4...) and "
                    "replace each by the quadexport layer of its type, verified to give the same outputs. Writes a "
                    "run dir that export (decomposed/function/fused), check, bench, compress and quadratize "
                    "accept. The run keeps a copy of FILE.py with its sha256; loading the run runs that code.",
        epilog="example: quadexport adopt models/qresnet.py:qresnet20 --weights save/model.th --input-shape 3,32,32 "
               "--out runs/qresnet20 && quadexport export runs/qresnet20 q.onnx --mode fused")
    p.add_argument("target", metavar="FILE.py:BUILDER",
                   help="your model file and the function in it that returns the model (the file is executed)")
    p.add_argument("--model-arg", action="append", type=model_arg, default=None, metavar="KEY=VALUE",
                   help="keyword argument of BUILDER (VALUE read as JSON when it parses), repeatable")
    p.add_argument("--weights", default=None, metavar="CKPT",
                   help="the trained checkpoint: a state dict, bare or under state_dict/model/model_state_dict/net, "
                        "module./_orig_mod. prefixes stripped; read weights-only (argparse.Namespace and numpy "
                        "scalars allowed)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle --weights without restriction: this RUNS ARBITRARY CODE the file may hold; only "
                        "for a checkpoint from a source you trust that pickles other types")
    p.add_argument("--input-shape", type=input_shape, action="append", default=None, metavar="C,H,W",
                   help="shape of one input (C,L for Conv1d models, F for an MLP); repeat it once per tensor "
                        "forward takes, in its order (forward(x, t): --input-shape 1 --input-shape 1); default: "
                        "the --dataset's")
    p.add_argument("--input-range", type=input_range, action="append", default=None, metavar="LO,HI",
                   help="draw the random inputs that verify the adoption (and later export and check it) uniformly "
                        "in [LO, HI] instead of N(0, 1), e.g. 0,1 for a model of [0, 1] images; once for all inputs "
                        "or once per --input-shape; recorded in the run (default: N(0, 1))")
    p.add_argument("--dataset", default=None, type=dataset_spec, metavar="DATASET",
                   help="measure and record the test accuracy on this dataset (digits, mnist, cifar10, "
                        "imagefolder:PATH, npz:FILE); export and check then use its preprocessing")
    p.add_argument("--data-dir", default=None, help="dataset location override")
    p.add_argument("--image-size", type=image_size, default=None, metavar="H[xW]",
                   help="imagefolder: datasets: the input size")
    p.add_argument("--include", nargs="+", default=None, metavar="GLOB",
                   help="adopt only neurons whose module paths match (globs)")
    p.add_argument("--exclude", nargs="+", default=None, metavar="GLOB", help="neurons to leave alone")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.set_defaults(func=run)


__all__ = ["input_range", "input_shape", "register", "run"]
