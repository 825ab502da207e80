"""Training loop: ReLinear parameter groups and penalty, per-epoch metrics, atomic checkpoints, resume, NaN guard,
optional DistributedDataParallel (``torchrun``).

Determinism: the model init is seeded and each epoch's sample order comes from ``DistributedSampler(seed=seed)``
with ``set_epoch`` (also with one process), so a resumed run sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quadexport._torchutil import load_state
from quadexport.adapter import set_trainable
from quadexport.data.lm import lm_metrics, task_loss
from quadexport.checkpoint import CHECKPOINT, read_checkpoint, save_checkpoint, write_json
from quadexport.errors import UsageError
from quadexport.relinear import param_groups, plain_init, quadratic_norms, quadratic_penalty, warm_start
from quadexport.rundir import RunDir, RunDirError, disagreement, open_run
from quadexport.trainconfig import TrainConfig, TrainingDiverged
from quadexport.trainlog import LOG_EVERY_STEPS, _plot, _Progress, curves_figure  # noqa: F401  (re-exported)
from quadexport.startfrom import from_run_model, from_run_overrides, source_meta

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
    from quadexport.checkpoint import read_checkpoint
    from quadexport.zoo import create_model
    from quadexport.zoo.foreign import load_weights
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


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Schedule multiplier for a (0-based) epoch."""
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


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
        loss_sum += float(task_loss(out, yb, reduction="sum"))
        correct += int((out.argmax(-1) == yb).sum())
        n += yb.numel()
    return loss_sum / n, correct / n


def _agree_finite(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every rank (all ranks must skip a step together, or DDP would hang)."""
    ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _sum_over_ranks(values: tuple[float, ...], world: int, device: torch.device) -> tuple[float, ...]:
    """Sum per-rank epoch statistics across DDP processes (identity with one process)."""
    if world <= 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return tuple(t.tolist())


def roll_back(model: nn.Module, opt: torch.optim.Optimizer, good: tuple[dict, dict], rollbacks: int,
              max_rollbacks: int, lr_mult: float, what: str, hint: str) -> float:
    """Restore the last good ``(model, optimizer)`` state after a NaN/Inf epoch and return the halved LR multiplier;
    after ``max_rollbacks`` rollbacks raise :class:`TrainingDiverged` (``what``: "training"/"fine-tuning")."""
    if rollbacks > max_rollbacks:
        raise TrainingDiverged(f"{what} diverged (NaN/Inf) after {rollbacks - 1} rollbacks with LR ×{lr_mult:g}; "
                               f"{hint}")
    model.load_state_dict(good[0])
    opt.load_state_dict(good[1])
    return lr_mult * 0.5


def _all_finite(model: nn.Module) -> bool:
    """Parameters *and* buffers (BN running statistics) are finite."""
    return all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None,
          plot: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset`` and write the run dir ``cfg.out``.

    A dir that already holds a run is refused unless ``resume`` or ``overwrite``; one process writes a run dir at a
    time (``quadexport.rundir``; under torchrun only rank 0 locks and writes).

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


@dataclass
class _Progressed:
    """Where a run stands: the next epoch to train, the NaN-rollback state and the metrics of the epochs done."""

    epoch: int = 0
    lr_mult: float = 1.0
    rollbacks: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Pass:
    """One pass over the training loader (this rank's sums)."""

    loss_sum: float = 0.0
    seen: int = 0
    correct: int = 0
    bad_steps: int = 0
    diverged: bool = False
    seconds: float = 0.0


def _device(cfg: TrainConfig) -> torch.device:
    device = torch.device(cfg.device if cfg.device == "cpu" else (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                                                   if cfg.device == "cuda" else cfg.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return device


def _resumed(cfg: TrainConfig, run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> _Progressed:
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
    st = _Progressed(int(ckpt["epoch"]), float(ckpt["extra"].get("lr_mult", 1.0)),
                     int(ckpt["extra"].get("rollbacks", 0)))
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        st.history = [m for m in json.loads(metrics_path.read_text())["epochs"] if m["epoch"] <= st.epoch]
    return st


def _train_pass(net: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, bar: Any, cfg: TrainConfig,
                device: torch.device, world: int) -> _Pass:
    """One epoch of steps; a non-finite loss skips its step, and 5 of them end the pass as diverged."""
    r, t0 = _Pass(), time.perf_counter()
    for xb, yb in bar:
        xb, yb = xb.to(device), yb.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
            out = net(xb)
        loss = task_loss(out.float(), yb)
        total = loss + quadratic_penalty(model, cfg.relinear)
        opt.zero_grad(set_to_none=True)
        if not _agree_finite(total, world):
            r.bad_steps += 1
            if r.bad_steps >= 5:
                r.diverged = True
                break
            continue
        total.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        r.loss_sum += float(loss.detach()) * yb.numel()
        r.seen += yb.numel()
        r.correct += int((out.argmax(-1) == yb).sum())
        bar.update(r.loss_sum / max(r.seen, 1))
    r.seconds = time.perf_counter() - t0
    return r


def _save_epoch(run: RunDir, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any],
                st: _Progressed, prep: Any) -> None:
    """Write metrics, config, then the checkpoint (the commit point); a staged run swaps in."""
    row = st.history[-1]
    meta.update(test_acc=row["test_acc"], epochs_done=st.epoch)
    metrics = {"model": cfg.model, "neuron": cfg.neuron, "dataset": cfg.dataset, "epochs": st.history,
               "test_acc": row["test_acc"], **({"val_bpb": row["val_bpb"], "task": "language-model"} if "val_bpb" in row else {})}
    if "val_bpb" in row:
        meta.update(val_bpb=row["val_bpb"], task="language-model")
    with run.saving():
        write_json(run.path / "metrics.json", run.stamp(metrics))
        write_json(run.path / "config.json", run.stamp({**cfg.to_dict(), "preprocessing": prep.to_dict()}))
        save_checkpoint(run.path, model, meta, opt.state_dict(), st.epoch,
                        {"lr_mult": st.lr_mult, "rollbacks": st.rollbacks}, run_id=run.run_id)
        run.commit()


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
    lm = getattr(data.source, "task", "classify") == "lm"
    model = build_model(cfg, data.num_classes, data.input_shape).to(device)
    opt = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a resumed state overwrites them with scheduled values
    st = _resumed(cfg, run_dir, model, opt) if resume else _Progressed()
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
    good_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    last = cfg.epochs if stop_after is None else min(cfg.epochs, st.epoch + stop_after)
    while st.epoch < last:
        data.sampler.set_epoch(st.epoch)
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * lr_factor(cfg, st.epoch) * st.lr_mult
        net.train()
        bar = _Progress(data.train, f"epoch {st.epoch + 1}/{cfg.epochs}", progress and rank == 0)
        r = _train_pass(net, model, opt, bar, cfg, device, world)
        test_loss, test_acc = (math.nan, 0.0) if r.diverged else evaluate_batches(model, data.test, device)
        if r.diverged or not _all_finite(model) or not math.isfinite(test_loss) or not math.isfinite(r.loss_sum):
            st.rollbacks += 1
            st.lr_mult = roll_back(model, opt, good_state, st.rollbacks, cfg.max_rollbacks, st.lr_mult,
                                   f"training in epoch {st.epoch + 1}", "lower --lr or use --relinear sg")
            if rank == 0:
                log.warning("epoch %d: NaN/Inf loss, weights or outputs; rolled back to the last good state, LR "
                            "multiplier now %g", st.epoch + 1, st.lr_mult)
            continue
        loss_sum, seen, correct = _sum_over_ranks((r.loss_sum, r.seen, r.correct), world, device)
        norms = quadratic_norms(model)
        st.history.append({"epoch": st.epoch + 1, "train_loss": loss_sum / max(seen, 1),
                           "train_acc": correct / max(seen, 1), "test_loss": test_loss, "test_acc": test_acc, **norms,
                           "lr": opt.param_groups[0]["lr"], "seconds": r.seconds,
                           "step_ms": 1000 * r.seconds / max(len(data.train), 1), "skipped_steps": r.bad_steps,
                           **(lm_metrics(test_loss, len(data.train)) if lm else {})})
        st.epoch += 1
        good_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        if rank == 0:
            quad = (f" |W_g| {norms['norm_wg']:.3g} |W_b| {norms['norm_wb']:.3g}" if cfg.neuron != "relu" else "")
            score = (f"val_bpb {st.history[-1]['val_bpb']:.4f}" if lm else f"test_acc {100 * test_acc:.2f}%")
            log.info(f"epoch {st.epoch}/{cfg.epochs} train_loss {st.history[-1]['train_loss']:.4f} test_loss "
                     f"{test_loss:.4f} {score}{quad} {r.seconds:.1f}s")
            _save_epoch(run, cfg, model, opt, meta, st, prep)
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
