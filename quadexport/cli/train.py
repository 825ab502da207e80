"""``quadexport train``: train a zoo model (quadratic or ReLU twin) with ReLinear on a dataset."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from quadexport.cli.argtypes import (ADAPTER_DEFAULT, BUILTIN_DATASETS, dataset_spec, finite_float, float_list,
                                     image_size, model_arg, nonneg_float, pos_int, show_defaults)


class _Append(argparse.Action):
    """``action="append"`` that starts a new list over any non-list default (the train parser's unset marker)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(items if isinstance(items, list) else []), values])


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The training flags (shared with ``compress --finetune-epochs`` and the pipeline)."""
    p.add_argument("--model", default="cnn",
                   help="zoo model (quadexport info models), torchvision:<arch> or timm:<arch>; default cnn")
    p.add_argument("--model-arg", action=_Append, type=model_arg, default=None, metavar="KEY=VALUE",
                   help="builder option, repeatable (e.g. patch_size=4 for a timm ViT on small images)")
    p.add_argument("--neuron", default="fan", help="neuron type (quadexport info neurons) or relu, default fan")
    p.add_argument("--dataset", default="digits", type=dataset_spec, metavar="DATASET",
                   help=f"{', '.join(BUILTIN_DATASETS)} (default digits), imagefolder:PATH (PATH/train/<class>/*.png "
                   "and PATH/val/) or npz:FILE (x_train, y_train, x_test, y_test)")
    p.add_argument("--image-size", type=image_size, default=None, metavar="H[xW]",
                   help="resize images to this size with PIL bilinear (any dataset; default: the built-in's own "
                        "size, an image folder's common size)")
    p.add_argument("--mean", type=float_list, default=None, metavar="M[,M,M]",
                   help="imagefolder:/npz: per-channel mean on the 0-1 scale (default: computed on the train split)")
    p.add_argument("--std", type=float_list, default=None, metavar="S[,S,S]", help="per-channel std, with --mean")
    p.add_argument("--data-dir", default=None, help="dataset location override")
    p.add_argument("--epochs", type=pos_int, default=10)
    p.add_argument("--batch-size", type=pos_int, default=64)
    p.add_argument("--lr", type=finite_float, default=0.05, help="base learning rate")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--weight-decay", type=nonneg_float, default=1e-4)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--relinear", choices=("none", "sg", "sw", "sg+sw"), default="sg",
                   help="ReLinear regulariser: sg = LR ratios for g/b, sw = penalty, none = plain training")
    p.add_argument("--lr-ratio", type=nonneg_float, default=1e-2,
                   help="sg: LR ratio of the g and b parameters (0 freezes them)")
    p.add_argument("--lr-ratio-g", type=nonneg_float, default=None, help="sg: ratio for g only")
    p.add_argument("--lr-ratio-b", type=nonneg_float, default=None, help="sg: ratio for b only")
    p.add_argument("--penalty", choices=("l1", "l2"), default="l2", help="sw: norm of the penalty")
    p.add_argument("--alpha", type=nonneg_float, default=1e-4, help="sw: coefficient on W_g")
    p.add_argument("--beta", type=nonneg_float, default=1e-4, help="sw: coefficient on W_b")
    p.add_argument("--init", choices=("relinear", "kaiming"), default="relinear",
                   help="relinear (W_g=0,b_g=1,W_b=0,c=0) or kaiming on every branch (control)")
    p.add_argument("--warm-start", default=None, metavar="RUN_DIR", help="copy W_r/BN/stem/head from a ReLU run")
    p.add_argument("--from", dest="from_run", default=None, metavar="RUN_DIR",
                   help="fine-tune the trained model of any run (zoo, foreign, quadratized) with a fresh schedule; "
                        "data and preprocessing default to that run's")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="load a state dict file into the new model (weights-only load; nothing is downloaded)")
    p.add_argument("--train-only", nargs="?", const=ADAPTER_DEFAULT, default="all", metavar="PARTS",
                   help=f"train only these '+'-joined parts of quadratic, bn, head (alone: {ADAPTER_DEFAULT}; "
                        "the primary weights stay frozen: adapter-only fine-tuning); default all")
    p.add_argument("--width", type=pos_int, default=None, help="width of mlp/cnn")
    p.add_argument("--train-subset", type=pos_int, default=None, help="train on N samples (stratified)")
    p.add_argument("--test-subset", type=pos_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="bf16 autocast (products stay fp32)")
    p.add_argument("--grad-clip", type=nonneg_float, default=0.0)


def config_from_args(a: argparse.Namespace, out: str):
    """Build a :class:`~quadexport.training.loop.TrainConfig` from parsed flags."""
    from quadexport.training.relinear import ReLinearConfig
    from quadexport.training.loop import TrainConfig

    rl = ReLinearConfig(mode=a.relinear, lr_ratio_g=a.lr_ratio if a.lr_ratio_g is None else a.lr_ratio_g,
                        lr_ratio_b=a.lr_ratio if a.lr_ratio_b is None else a.lr_ratio_b, penalty=a.penalty,
                        alpha=a.alpha, beta=a.beta, init=a.init)
    return TrainConfig(model=a.model, neuron=a.neuron, dataset=a.dataset, out=out, epochs=a.epochs,
                       batch_size=a.batch_size, lr=a.lr, optimizer=a.optimizer, weight_decay=a.weight_decay,
                       schedule=a.schedule, relinear=rl, seed=a.seed, data_dir=a.data_dir,
                       train_subset=a.train_subset, test_subset=a.test_subset, warm_start=a.warm_start,
                       width=a.width, device=a.device, amp=a.amp, grad_clip=a.grad_clip,
                       image_size=a.image_size, mean=a.mean, std=a.std, train_only=a.train_only,
                       from_run=a.from_run, weights=a.weights, model_args=dict(a.model_arg or []))


_DATA_FLAGS = ("dataset", "data_dir", "train_subset", "test_subset", "image_size", "mean", "std")
"""What ``--from`` takes from the source run unless given."""


def _from_defaults(a: argparse.Namespace, given: dict[str, Any]) -> None:
    """``--from RUN``: the data flags not typed come from RUN; the model is RUN's (model flags are refused)."""
    from quadexport.runs.checkpoint import read_checkpoint
    from quadexport.data import parse_dataset_spec, run_preprocessing
    from quadexport.errors import UsageError

    clash = [f"--{d.replace('_', '-')}" for d in ("model", "neuron", "width", "model_arg", "init") if d in given]
    if clash:
        raise UsageError(f"--from takes the model of {a.from_run}; drop {', '.join(clash)}")
    ckpt = read_checkpoint(a.from_run)
    meta = ckpt["meta"]
    a.model, a.neuron = ckpt["config"].get("name", a.model), ckpt["config"].get("neuron", a.neuron)
    tc = meta.get("train_config") or {}
    spec = meta.get("dataset") or tc.get("dataset")
    prep = run_preprocessing(meta) if spec and parse_dataset_spec(spec).kind != "builtin" else None
    src = {**{d: tc.get(d) for d in _DATA_FLAGS}, "dataset": spec,
           "mean": prep.mean if prep else None, "std": prep.std if prep else None}
    for dest in _DATA_FLAGS:
        if dest not in given and src.get(dest) is not None:
            setattr(a, dest, tuple(src[dest]) if isinstance(src[dest], list) else src[dest])


_UNSET: Any = object()  # default of every training flag, so run() can tell the flags a user typed
# Flags that set a nested/other config key (all others set the key of their own name).
_FLAG_KEYS = {"relinear": ("relinear.mode",), "lr_ratio": ("relinear.lr_ratio_g", "relinear.lr_ratio_b"),
              "lr_ratio_g": ("relinear.lr_ratio_g",), "lr_ratio_b": ("relinear.lr_ratio_b",),
              "penalty": ("relinear.penalty",), "alpha": ("relinear.alpha",), "beta": ("relinear.beta",),
              "init": ("relinear.init",)}


def _train_defaults() -> dict[str, Any]:
    """dest -> default of every training flag."""
    probe = argparse.ArgumentParser(add_help=False)
    add_train_arguments(probe)
    return vars(probe.parse_args([]))


def _given_flags(a: argparse.Namespace) -> dict[str, Any]:
    """The training flags typed on the command line (dest -> value); fills the others with their defaults."""
    given = {}
    for dest, default in _train_defaults().items():
        if getattr(a, dest, _UNSET) is _UNSET:
            setattr(a, dest, default)
        else:
            given[dest] = getattr(a, dest)
    return given


def _resume_config(a: argparse.Namespace, given: dict[str, Any]):
    """``--resume``: the run's own config.json; typed flags must agree with it (``--epochs`` may extend)."""
    from quadexport.runs.rundir import CONFIG, RunDirError, merge_resume_config, read_json
    from quadexport.training.loop import TrainConfig

    saved = read_json(Path(a.out) / CONFIG)
    if saved is None:
        raise RunDirError(f"{a.out} holds no run to resume (no {CONFIG}); drop --resume to start a new run there")
    keys = {k: (f"--{dest.replace('_', '-')}", v) for dest, v in given.items() for k in _FLAG_KEYS.get(dest, (dest,))}
    merged = merge_resume_config(saved, keys)
    merged["out"] = a.out
    return TrainConfig(**{k: v for k, v in merged.items() if k in TrainConfig.__dataclass_fields__})


def _interrupted(out: str, overwrite: bool, previous_id: str | None) -> str:
    """What Ctrl-C left in ``out``, with the exact command that continues it."""
    from quadexport.runs.rundir import CHECKPOINT, run_id_of

    if not (Path(out) / CHECKPOINT).is_file():
        return f"quadexport train: interrupted before the first checkpoint; nothing was written to {out}"
    if overwrite and run_id_of(out) == previous_id:
        return (f"quadexport train: interrupted before the new run's first checkpoint; {out} still holds the previous "
                f"run, unchanged")
    return f"quadexport train: interrupted; resume with: quadexport train --out {shlex.quote(out)} --resume"


_SG_FLAGS, _SW_FLAGS = ("lr_ratio", "lr_ratio_g", "lr_ratio_b"), ("penalty", "alpha", "beta")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _refuse_conflicts(a: argparse.Namespace, given: dict[str, Any]) -> None:
    """Flags that would not apply are refused rather than recorded as if they did."""
    from quadexport.errors import UsageError

    if a.neuron == "relu":
        moot = [d for d in ("relinear", *_SG_FLAGS, *_SW_FLAGS) if d in given and not
                (d == "relinear" and given[d] == "none")]
        if moot:
            raise UsageError(f"--neuron relu has no quadratic parameters, so {', '.join(map(_flag, moot))} would "
                             "not apply; drop them (or pick a quadratic --neuron)")
        return
    unused = {"none": _SG_FLAGS + _SW_FLAGS, "sg": _SW_FLAGS, "sw": _SG_FLAGS}.get(a.relinear, ())
    moot = [d for d in unused if d in given]
    if moot:
        needs = "sg" if moot[0] in _SG_FLAGS else "sw"
        raise UsageError(f"{', '.join(map(_flag, moot))} only apply with --relinear {needs} (or sg+sw), not "
                         f"--relinear {a.relinear}; drop them or change --relinear")


def run(a: argparse.Namespace) -> int:
    from quadexport.runs.rundir import run_id_of
    from quadexport.training.loop import train

    given = _given_flags(a)
    if a.from_run and not a.resume:
        _from_defaults(a, given)
    if not a.resume:
        _refuse_conflicts(a, given)
    cfg = _resume_config(a, given) if a.resume else config_from_args(a, a.out)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    previous_id = run_id_of(a.out)
    try:  # TrainingDiverged, UsageError...: QuadexportErrors, one line, exit 2
        metrics = train(cfg, resume=a.resume, overwrite=a.overwrite)
    except KeyboardInterrupt:
        if rank0:
            print(_interrupted(a.out, a.overwrite, previous_id), file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        score = (f"validation {metrics['val_bpb']:.4f} bits per byte" if "val_bpb" in metrics
                 else f"test accuracy {100 * metrics['test_acc']:.2f}%")
        print(f"{metrics['model']} ({metrics['neuron']}) on {cfg.dataset}: {score} -> {cfg.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model; writes a run dir (checkpoint, metrics.json, curves.png)",
                       description="Train a zoo model with ReLinear. Example: quadexport train --model resnet20 "
                       "--neuron fan --dataset fashion-mnist --epochs 10 --relinear sg --lr-ratio 1e-2 --out runs/x")
    add_train_arguments(p)
    show_defaults(p)  # before the defaults become _UNSET
    p.set_defaults(**{dest: _UNSET for dest in _train_defaults()})
    p.add_argument("--out", required=True, help="run directory to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last epoch, with its own config (other flags must agree; "
                        "--epochs may extend it)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (the old run stays until the new one's first checkpoint)")
    p.set_defaults(func=run)
