"""Training loop: ReLinear parameter groups and penalty, per-epoch metrics, atomic checkpoints, resume, NaN guard,
optional DistributedDataParallel (``torchrun``).

Determinism: the model init is seeded and each epoch's sample order comes from ``DistributedSampler(seed=seed)``
with ``set_epoch`` (also with one process), so a resumed run sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quadexport._torchutil import load_state
from quadexport.training.adapter import set_trainable
from quadexport.runs.checkpoint import CHECKPOINT, read_checkpoint
from quadexport.runs.write import write_run
from quadexport.data.lm import lm_metrics, task_loss
from quadexport.errors import UsageError
from quadexport.training.relinear import param_groups, plain_init, quadratic_norms, warm_start
from quadexport.runs.rundir import RunDir, RunDirError, disagreement, open_run
from quadexport.training.config import TrainConfig, TrainingDiverged
from quadexport.training.log import LOG_EVERY_STEPS, _plot, _Progress, curves_figure  # noqa: F401  (re-exported)
from quadexport.training.steps import Progressed, all_finite, epoch_loop, lr_factor, roll_back, train_pass  # noqa: F401
from quadexport.training.startfrom import from_run_model, from_run_overrides, source_meta

log = logging.getLogger(__name__)


def _dist() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("QUADEXPORT_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def build_model(cfg: TrainConfig, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Create the model of ``cfg`` for a dataset (seeded): its init, or the weights of ``--from`` /
    ``--warm-start`` / ``--weights``; then freeze what ``--train-only`` leaves out. A model that cannot take the
    dataset's input size is refused here (:func:`~quadexport.zoo.inputsize.check_input_size`)."""
    from quadexport.runs.checkpoint import read_checkpoint
    from quadexport.transforms import create_model
    from quadexport.transforms.weights import load_weights
    from quadexport.zoo.inputsize import check_input_size

    torch.manual_seed(cfg.seed)
    if cfg.from_run:
        model = from_run_model(cfg.from_run, num_classes, input_shape)
    else:
        kw = {"width": cfg.width} if cfg.width else {}
        model = create_model(cfg.model, neuron=cfg.neuron, num_classes=num_classes, in_channels=input_shape[0],
                             input_size=tuple(input_shape[1:]), **kw, **cfg.model_args)
        if cfg.relinear.init == "kaiming":
            plain_init(model)
    check_input_size(model, input_shape, cfg.model)  # one line naming the size that works, before any training
    if cfg.warm_start:
        src = read_checkpoint(cfg.warm_start)
        if src["config"].get("neuron") != "relu":
            raise UsageError(f"--warm-start expects a ReLU run dir, {cfg.warm_start} has neuron "
                             f"{src['config'].get('neuron')!r}")
        warm_start(model, src["model"])
    if cfg.weights:
        load_weights(model, cfg.weights)
    set_trainable(model, cfg.train_only)
    return model


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Optimizer over the ReLinear parameter groups."""
    groups = param_groups(model, cfg.lr, cfg.relinear, cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on tensors ``x, y``; NaN loss if outputs are not finite."""
    return evaluate_batches(model, ((x[i:i + batch_size], y[i:i + batch_size])
                                    for i in range(0, len(x), batch_size)), device)


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over an iterable of ``(x, y)`` batches (e.g. a DataLoader)."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for xb, yb in batches:
        xb, yb = xb.to(device), yb.to(device)
        out = model(xb).float()
        loss_sum += float(task_loss(out, yb, reduction="sum"))  # classes, or every position's next token
        correct += int((out.argmax(-1) == yb).sum())
        n += yb.numel()
    return loss_sum / n, correct / n


def _sum_over_ranks(values: tuple[float, ...], world: int, device: torch.device) -> tuple[float, ...]:
    """Sum per-rank epoch statistics across DDP processes (identity with one process)."""
    if world <= 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return tuple(t.tolist())


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None,
          plot: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset`` and write the run dir ``cfg.out``.

    A dir that already holds a run is refused unless ``resume`` or ``overwrite``; one process writes a run dir at a
    time (``quadexport.runs.rundir``; under torchrun only rank 0 locks and writes).

    Args:
        cfg: the training configuration.
        resume: continue from ``cfg.out/checkpoint.pt`` (its config must match ``cfg``).
        overwrite: replace the run in ``cfg.out``; the old run stays intact until the new one's first checkpoint.
        progress: show per-epoch progress (rank 0, logging at INFO): a tqdm bar on a terminal, else a log line
            every :data:`LOG_EVERY_STEPS` steps. Epoch lines are logged (INFO) either way.
        stop_after: end this call after that many epochs (the run stays resumable), e.g. to split a long run.
        plot: draw ``curves.png`` at the end (matplotlib, ~2 s; off for many tiny runs).

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    if resume and overwrite:
        raise UsageError("give --resume or --overwrite, not both")
    mode = "resume" if resume else "overwrite" if overwrite else "new"
    if cfg.from_run:  # the model of the --from run
        cfg = replace(cfg, **from_run_overrides(cfg.from_run))
    with open_run(cfg.out, mode, writer=int(os.environ.get("RANK", "0")) == 0) as run:
        return _train(cfg, run, resume, progress, stop_after, plot)


def _device(cfg: TrainConfig) -> torch.device:
    device = torch.device(cfg.device if cfg.device == "cpu" else (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                                                   if cfg.device == "cuda" else cfg.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return device


def _resumed(cfg: TrainConfig, run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> Progressed:
    """Load ``run_dir``'s checkpoint into ``model`` and ``opt`` after checking that it belongs to ``cfg``."""
    ckpt = read_checkpoint(run_dir)
    bad = disagreement(run_dir, ckpt.get("run_id"), None)  # metrics ahead of the checkpoint: cut back below
    if bad:
        raise RunDirError(bad.message)
    if int(ckpt["epoch"]) > cfg.epochs:
        raise UsageError(f"--resume: {run_dir} has done {ckpt['epoch']} epochs; --epochs {cfg.epochs} cannot undo "
                         f"them (give --epochs >= {ckpt['epoch']})")
    saved = ckpt["meta"].get("train_config", {})
    mine, defaults = cfg.to_dict(), TrainConfig().to_dict()  # keys newer than the run: their defaults
    diff = [k for k in mine if k not in ("epochs", "out") and saved.get(k, defaults.get(k)) != mine[k]]
    if diff:
        raise UsageError(f"--resume: {run_dir} was trained with other settings ({', '.join(diff)})")
    load_state(model, ckpt["model"])
    if ckpt["optimizer"]:
        opt.load_state_dict(ckpt["optimizer"])
    st = Progressed(int(ckpt["epoch"]), float(ckpt["extra"].get("lr_mult", 1.0)),
                     int(ckpt["extra"].get("rollbacks", 0)))
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        st.history = [m for m in json.loads(metrics_path.read_text())["epochs"] if m["epoch"] <= st.epoch]
    return st


def _save_epoch(run: RunDir, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any],
                st: Progressed, prep: Any) -> None:
    """Write metrics, config, then the checkpoint (the commit point); a staged run swaps in."""
    row = st.history[-1]
    meta.update(test_acc=row["test_acc"], epochs_done=st.epoch)
    metrics = {"model": cfg.model, "neuron": cfg.neuron, "dataset": cfg.dataset, "epochs": st.history,
               "test_acc": row["test_acc"]}
    if "val_bpb" in row:  # a language model: validation bits per byte, and the task for `info RUN`
        metrics.update(val_bpb=row["val_bpb"], task="language-model")
        meta.update(val_bpb=row["val_bpb"], task="language-model")
    write_run(run, model, meta, config={**cfg.to_dict(), "preprocessing": prep.to_dict()}, metrics=metrics,
              optimizer_state=opt.state_dict(), epoch=st.epoch, extra={"lr_mult": st.lr_mult, "rollbacks": st.rollbacks})


def _train(cfg: TrainConfig, run: RunDir, resume: bool, progress: bool, stop_after: int | None,
           plot: bool) -> dict[str, Any]:
    """The body of :func:`train` inside its open run dir (``run.path``: where rank 0 writes)."""

    from quadexport.data import DataOptions, training_loaders

    rank, world = _dist()
    device, run_dir = _device(cfg), Path(cfg.out)
    data = training_loaders(cfg.dataset, DataOptions(data_dir=cfg.data_dir, train_subset=cfg.train_subset,
                                                     test_subset=cfg.test_subset, seed=cfg.seed,
                                                     image_size=cfg.image_size, mean=cfg.mean, std=cfg.std,
                                                     context=int(cfg.model_args.get("context", 64))),
                            cfg.batch_size, rank, world)
    lm = getattr(data.source, "task", "classify") == "lm"  # text: a language model (quadexport.data.text)
    model = build_model(cfg, data.num_classes, data.input_shape).to(device)
    opt = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a resumed state overwrites them with scheduled values
    st = _resumed(cfg, run_dir, model, opt) if resume else Progressed()
    if not resume and rank == 0:
        run.path.mkdir(parents=True, exist_ok=True)
        if not os.access(run.path, os.W_OK):
            raise PermissionError(f"output dir {run_dir} is not writable")
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    prep = data.preprocessing
    meta = {"dataset": cfg.dataset, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "normalization": prep.normalization(), "preprocessing": prep.to_dict(), "relinear": cfg.relinear.to_dict(),
            "train_config": cfg.to_dict(), **source_meta(cfg.from_run)}
    last = cfg.epochs if stop_after is None else min(cfg.epochs, st.epoch + stop_after)

    def run_epoch(epoch: int) -> dict[str, Any] | None:
        data.sampler.set_epoch(epoch)
        net.train()
        bar = _Progress(data.train, f"epoch {epoch + 1}/{cfg.epochs}", progress and rank == 0)
        r = train_pass(net, model, opt, bar, cfg, device, world, on_loss=bar.update)
        test_loss, test_acc = (math.nan, 0.0) if r.diverged else evaluate_batches(model, data.test, device)
        if r.diverged or not math.isfinite(test_loss) or not math.isfinite(r.loss_sum):
            return None
        loss_sum, seen, correct = _sum_over_ranks((r.loss_sum, r.seen, r.correct), world, device)
        return {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                "test_loss": test_loss, "test_acc": test_acc, **quadratic_norms(model),
                "lr": opt.param_groups[0]["lr"], "seconds": r.seconds,
                "step_ms": 1000 * r.seconds / max(len(data.train), 1), "skipped_steps": r.bad_steps,
                **(lm_metrics(test_loss, len(data.train)) if lm else {})}

    def on_epoch(st: Progressed) -> None:
        if rank == 0:
            row = st.history[-1]
            quad = (f" |W_g| {row['norm_wg']:.3g} |W_b| {row['norm_wb']:.3g}" if cfg.neuron != "relu" else "")
            score = f"val_bpb {row['val_bpb']:.4f}" if lm else f"test_acc {100 * row['test_acc']:.2f}%"
            log.info(f"epoch {st.epoch}/{cfg.epochs} train_loss {row['train_loss']:.4f} test_loss "
                     f"{row['test_loss']:.4f} {score}{quad} {row['seconds']:.1f}s")
            _save_epoch(run, cfg, model, opt, meta, st, prep)

    def on_rollback(epoch: int, lr_mult: float) -> None:
        if rank == 0:
            log.warning("epoch %d: NaN/Inf loss, weights or outputs; rolled back to the last good state, LR "
                        "multiplier now %g", epoch, lr_mult)

    epoch_loop(model, opt, cfg, st, last, run_epoch, base_lrs=base_lrs, what="training",
               hint="lower --lr or use --relinear sg", on_epoch=on_epoch, on_rollback=on_rollback)
    return _finish(cfg, run_dir, rank, world, plot)


def _finish(cfg: TrainConfig, run_dir: Path, rank: int, world: int, plot: bool) -> dict[str, Any]:
    """Draw the curves (rank 0), wait for every rank, and return the metrics as written."""
    if rank == 0 and plot:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        _plot(run_dir, metrics["epochs"], f"{cfg.model} / {cfg.neuron} on {cfg.dataset}",
              quadratic=cfg.neuron != "relu")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return json.loads((run_dir / "metrics.json").read_text())


__all__ = ["CHECKPOINT", "TrainConfig", "TrainingDiverged", "evaluate", "evaluate_batches", "roll_back", "train"]
