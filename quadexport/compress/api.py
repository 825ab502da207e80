"""``compress(run_dir, out, config)``: prune quadratic terms, fine-tune, optionally quantise; write a run dir and a
report (``compress_report.json`` / ``.md``). Stages: open → calibrate → choose the threshold (given, or searched
for a cost target) → rewrite → fine-tune → fold → hold the accuracy budget → write run → parity → int8 → latency →
report (:mod:`quadexport.compress.outputs` holds the output stages)."""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import quadexport.compress.outputs as outputs
from quadexport.compress.config import DEFAULT_THRESHOLD, CompressConfig, CompressError
from quadexport.compress.job import FAST_OPSET, Job, export_onnx, macs, twin_of
from quadexport.compress.outputs import FP32_ONNX, INT8_ONNX
from quadexport.compress.plan import Plan, nchwc_block, plan, search_threshold
from quadexport.compress.report import CompressOutcome, CompressReport, build_report, render_report
from quadexport.compress.rewrite import compress_model, fold_mixed_bn
from quadexport.compress.rundata import open_data, random_data
from quadexport.compress.taskloss import outputs_rel
from quadexport.compress.stats import channel_scores, collect_stats, is_fan_form, splittable
from quadexport.exporter.outputs import flatten
from quadexport.transforms.prune_spec import get_spec

REPORT_JSON, REPORT_MD = "compress_report.json", "compress_report.md"

__all__ = ["CompressConfig", "CompressError", "CompressReport", "DEFAULT_THRESHOLD", "FP32_ONNX", "INT8_ONNX",
           "REPORT_JSON", "REPORT_MD", "compress", "compress_run", "render_report", "twin_of"]


def compress(run_dir: str | Path, out: str | Path, config: CompressConfig | None = None,
             **options: Any) -> CompressReport:
    """Compress a trained quadratic run into a new run dir (see ``docs/compression.md``).

    Args:
        run_dir: the trained run (any model with Fan-form quadratic layers: zoo, quadratized, your own).
        out: the new run dir (``checkpoint.pt`` rebuilds the compressed architecture; ``model.onnx``,
            ``model.int8.onnx`` if quantised, ``compress_report.json``/``.md``).
        config: the options (:class:`~quadexport.compress.config.CompressConfig`); ``options`` override its fields
            (``compress(run, out, threshold=0.05, bench=False)``).

    Returns:
        The :class:`~quadexport.compress.report.CompressReport` (also written to ``out``).
    """
    cfg = replace(config or CompressConfig(), **options)
    return compress_run(run_dir, out, cfg)


def compress_run(run_dir: str | Path, out: str | Path, cfg: CompressConfig) -> CompressReport:
    """:func:`compress` with its options as one :class:`~quadexport.compress.config.CompressConfig`."""
    from quadexport.runs.atomicfile import write_json
    from quadexport.runs.rundir import open_run

    t_start = time.perf_counter()
    job = _open(Path(run_dir), Path(out), cfg)
    # One writer; written into a staging dir that replaces `out` (atomically) only once complete.
    job.run = open_run(job.o.out, "overwrite" if cfg.overwrite else "new", resumable=False)
    tmp = Path(tempfile.mkdtemp(prefix="quadexport-compress-"))
    try:
        _calibrate(job)
        if cfg.target_ratio is not None and not job.already:
            _select(job, tmp) if cfg.selects_layers() else _search(job, tmp)
        for attempt in range(3):
            _rewrite(job)
            _finetune_and_fold(job)
            if _within_budget(job) or cfg.target_ratio is not None or not job.changed or attempt == 2:
                break
            job.threshold = float(job.threshold) / 2
            job.say(f"== validation accuracy dropped more than --max-drop {cfg.max_drop} pp: retry with threshold "
                    f"{job.threshold:.4g}")
        fp32_path = outputs.write_run(job)
        if cfg.check:
            outputs.parity(job, fp32_path)
        if cfg.quantize:
            outputs.int8(job, fp32_path)
        if cfg.twin is not None:
            outputs.trained_twin(job)
        if cfg.bench:
            outputs.bench(job, fp32_path)
        _targets(job)
        job.o.seconds = time.perf_counter() - t_start
        report = build_report(job.o)
        write_json(job.dir / REPORT_JSON, report.to_dict())
        (job.dir / REPORT_MD).write_text(render_report(report))
    except BaseException:
        job.run.close()  # the staging dir goes; an old `out` stays as it was
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with job.run:
        job.run.commit()
    job.say(f"== wrote {job.o.out} ({REPORT_MD})")
    return report


def _is_classifier(run_dir: Path, model: torch.nn.Module, cfg: CompressConfig) -> bool:
    """Whether the run is a classifier; without a task loss compress measures top-1 accuracy and fine-tunes with
    cross-entropy on class labels, so any other run is refused naming ``--task-loss``."""
    from quadexport.exporter.outputs import run_structure

    s = run_structure(model)
    if s is not None and not s.is_classifier:
        if cfg.task_loss is None:
            hint = ("--task-loss next-token (its own objective: cross-entropy on the next bytes)"
                    if s.task == "language-model" else "--task-loss distill-mse (match the uncompressed model's "
                    "outputs, no labels needed)")
            raise CompressError(f"{run_dir} is a {s.task} run (outputs {s.summary()}): without a task loss compress "
                                f"takes classifier runs only; give {hint}")
        if cfg.quantize:
            raise CompressError(f"{run_dir} is a {s.task} run: --quantize int8 judges the int8 file by test "
                                f"accuracy, which only classifier runs have; compress it without --quantize")
        return False
    return True


def _open_data(run_dir: Path, meta: dict[str, Any], shape: tuple[int, ...], cfg: CompressConfig,
               model: torch.nn.Module) -> Any:
    """The run's data (its dataset, or random inputs for a task loss without labels), with the task loss and the
    uncompressed model (its teacher) attached."""
    from quadexport.compress.taskloss import get_task_loss

    task = get_task_loss(cfg.task_loss) if cfg.task_loss else None
    if meta.get("dataset"):
        # the data last of the checks, and before anything is written: a dataset that is gone is a one-line error
        data = open_data(run_dir, meta, cfg.calib_samples, cfg.val_samples, cfg.data_dir)
    elif task is not None and not task.needs_labels:
        data = random_data(meta, shape, cfg.calib_samples, cfg.val_samples)
    elif task is not None:
        raise CompressError(f"{run_dir} has no dataset, and --task-loss {task.name} needs labels; use "
                            f"--task-loss distill-mse")
    else:
        raise CompressError(f"{run_dir} has no dataset in its metadata; cannot calibrate (--task-loss distill-mse "
                            f"needs no dataset)")
    if task is not None:
        data.task, data.teacher = task, copy.deepcopy(model).eval()
    return data


def _open(run_dir: Path, out: Path, cfg: CompressConfig) -> Job:
    """Check the paths, load the source run; a run with nothing to prune is refused before any calibration."""
    from quadexport.runs.checkpoint import build_from_checkpoint, read_checkpoint
    from quadexport.runs.rundir import holds_run

    if out.resolve() == run_dir.resolve():
        raise CompressError("--out must be a new run dir, not the input run dir")
    if holds_run(out) and not cfg.overwrite:  # fail fast; open_run checks again under the lock
        raise CompressError(f"{out} already holds a run; pass --overwrite to replace it")
    ckpt = read_checkpoint(run_dir)
    model = build_from_checkpoint(ckpt).eval()
    already = get_spec(model) is not None
    if already and (cfg.target_ratio is not None or cfg.threshold or not cfg.quantize):
        raise CompressError(f"{run_dir} is already compressed: only --quantize int8 applies to it; compress the "
                            f"original run instead")
    if not already and not any(is_fan_form(m) for m in model.modules()):
        neuron = model.quadexport_config.get("neuron")
        if not cfg.quantize or cfg.threshold or cfg.target_ratio is not None:
            raise CompressError(f"{run_dir} has no quadratic (Fan-form) layer (neuron {neuron!r}): there is nothing "
                                f"to prune; give --quantize int8 alone to quantise it")
    meta = dict(ckpt["meta"])
    classifier = _is_classifier(run_dir, model, cfg)
    shape = tuple(int(v) for v in meta["input_shape"])
    align = nchwc_block() if cfg.align is None else int(cfg.align)
    data = _open_data(run_dir, meta, shape, cfg, model)
    return Job(cfg, ckpt, meta, shape, align, already, CompressOutcome(run_dir, out, model), data=data,
               threshold=cfg.initial_threshold(), accuracy=classifier and data.source is not None)


def _calibrate(job: Job) -> None:
    """Original accuracies (test and validation), channel groups, channel scores, MACs."""
    cfg, o, meta, data = job.cfg, job.o, job.meta, job.data
    what = f"{meta['dataset']} training images" if meta.get("dataset") else "random inputs (the run has no dataset)"
    job.say(f"== calibrate on {len(job.calib)} {what}")
    with torch.no_grad():
        if not all(bool(torch.isfinite(t).all()) for t in flatten(o.model(job.calib[:256]))):
            raise CompressError(f"{o.run_dir}: the model's outputs on its own training images are NaN/Inf; "
                                f"retrain the run (e.g. with --relinear sg) before compressing it")
    t0 = time.perf_counter()
    tc = meta.get("train_config") or {}
    if not job.accuracy:  # a task loss on a run without accuracy: the validation split reports that loss
        o.acc_orig = None
    elif isinstance(meta.get("test_acc"), float) and tc and tc.get("test_subset") is None and not cfg.data_dir:
        o.acc_orig = float(meta["test_acc"])  # the run's own evaluation on this same (full) test split
    else:
        o.acc_orig = data.accuracy(o.model, "test")
    nv = len(data.val)
    if job.accuracy:
        o.val = {"samples": nv, "original": data.accuracy(o.model, "val") if nv else None}
    else:
        o.val = {"samples": nv, "task_loss": cfg.task_loss, "original_loss": data.loss(o.model, "val")}
    if not job.already:
        from quadexport.compress.permute import verify_permutations
        from quadexport.compress.structure import describe

        job.structure = describe(o.model, job.shape)
        o.unresolved = verify_permutations(o.model, job.structure, job.calib[:4]) + [
            f"{g.name}: {g.reason}" for g in job.structure.groups if not getattr(g, "resolved", True)]
        o.unresolved = sorted(set(o.unresolved))
        batches = list(job.bar(job.calib.split(256), "calibration"))
        job.scores = channel_scores(collect_stats(o.model, torch.cat(batches) if batches else job.calib))
    job.say(f"   original {_measure(job, o.acc_orig, o.val)} ({time.perf_counter() - t0:.0f} s)")
    job.twin_model = twin_of(o.model)
    o.macs_twin = macs(job.twin_model, job.shape)
    o.macs_orig = macs(o.model, job.shape)


def _search(job: Job, tmp: Path) -> None:
    """Find the threshold that meets ``cfg.target_ratio`` (MACs or measured latency vs the ReLU twin)."""
    cfg, o, shape = job.cfg, job.o, job.shape
    job.say(f"== search the threshold for a {cfg.cost} ratio <= {cfg.target_ratio} vs the ReLU twin")
    twin_onnx = export_onnx(job.twin_model, tmp / "twin.onnx", shape) if cfg.cost == "latency" else None

    def cost_fn(p: Plan) -> float:
        if cfg.cost == "macs":
            return macs(compress_model(o.model, p, job.scores, cfg.split, cfg.shortcut)[0], shape) / o.macs_twin
        return _time_ratios(job, [export_onnx(_folded(job, p), tmp / "cand.onnx", shape)], twin_onnx, 0.5)[0]

    steps = job.bar(iter(int, 1), "search")  # one tick per measured step
    ticking = iter(steps)

    def log_step(msg: str) -> None:
        next(ticking, None)
        job.say(msg)

    job.threshold, o.trace = search_threshold(o.model, job.scores, float(cfg.target_ratio), cost_fn, job.align,
                                              cfg.drop_branches, max_steps=40 if cfg.cost == "macs" else 7,
                                              log=log_step, structure=job.structure)
    job.searched_cost = next((s["cost"] for s in o.trace if s["threshold"] == job.threshold), None)


def _select(job: Job, tmp: Path) -> None:
    """Choose the layers that stay quadratic by measured cost per validation loss (:mod:`.select`)."""
    from quadexport.compress.select import candidate_options, select_layers

    cfg, o, shape = job.cfg, job.o, job.shape
    job.threshold = DEFAULT_THRESHOLD if job.threshold is None else job.threshold  # decides branch drops only
    job.say(f"== choose layers by measured cost per accuracy for a latency ratio <= {cfg.target_ratio} vs the "
            f"ReLU twin")
    twin_onnx = export_onnx(job.twin_model, tmp / "twin.onnx", shape, opset=FAST_OPSET)
    exported: dict[tuple[tuple[str, int], ...], Path] = {}  # keep map -> its ONNX file: each model built once

    def build(keep: dict[str, int]) -> torch.nn.Module:
        return _folded(job, plan(o.model, job.scores, float(job.threshold), job.align, cfg.drop_branches,
                                 job.structure, keep=keep))

    def onnx_of(keep: dict[str, int], model: torch.nn.Module | None = None) -> Path:
        key = tuple(sorted(keep.items()))
        if key not in exported:
            model = model if model is not None else build(keep)
            exported[key] = export_onnx(model, tmp / f"option{len(exported)}.onnx", shape, opset=FAST_OPSET)
        return exported[key]

    channels = {n: int(sc["lin"].score.numel()) for n, sc in job.scores.items()}
    split_ok = {n for n, m in o.model.named_modules() if n in channels and splittable(m)}
    ticks = iter(job.bar(range(len(candidate_options(channels, job.align, split_ok)) + 1), "layer options"))

    def measure(keep: dict[str, int]) -> tuple[float, float]:
        next(ticks, None)
        model = build(keep)
        onnx_of(keep, model)
        loss = job.data.loss(model, "val")
        if not math.isfinite(loss):  # a NaN candidate is a bug of the rewrite: name it rather than rank it
            raise CompressError(f"the {_label(keep)} candidate's validation loss is {loss} (NaN/Inf outputs on the "
                                f"run's data, although the model's are finite); please report this run")
        return loss, macs(model, shape) / o.macs_twin

    def costs(keeps: list[dict[str, int]]) -> list[float]:
        paths = [onnx_of(k) for k in keeps]
        seconds = cfg.min_seconds if len(keeps) <= 2 else min(cfg.min_seconds, 0.5)
        return _time_ratios(job, paths, twin_onnx, seconds)

    sel = select_layers(channels, job.align, float(cfg.target_ratio), measure, costs, log=job.say,
                        splittable=split_ok)
    job.keep, job.searched_cost, o.selection = sel.keep, sel.cost, sel.to_dict()


def _label(keep: dict[str, int]) -> str:
    return "all-linear" if not keep else ", ".join(f"{k} ({v} quadratic)" for k, v in keep.items())


def _folded(job: Job, p: Plan) -> torch.nn.Module:
    """The model compressed by plan ``p``, BatchNorms folded into its mixed layers, in eval mode."""
    cm, spec = compress_model(job.o.model, p, job.scores, job.cfg.split, job.cfg.shortcut)
    fold_mixed_bn(cm, spec, p.structure)
    return cm.eval()


def _time_ratios(job: Job, paths: list[Path], twin_onnx: Path, seconds: float) -> list[float]:
    """Measured onnxruntime latency of each ONNX file over the ReLU twin's (worst of the batch sizes), interleaved."""
    from quadexport.compress.latency import p50, time_onnx

    from quadexport.bench.timing import NonFiniteOutput

    named = {f"m{i}": p for i, p in enumerate(paths)}
    try:
        t = time_onnx({**named, "twin": twin_onnx}, job.shape, job.cfg.batches, job.cfg.threads,
                      min_seconds=seconds, inputs=job.calib)  # on the run's calibration data
    except NonFiniteOutput as e:
        key = str(e).split(" ", 1)[0]
        raise CompressError(f"candidate {Path(named.get(key, twin_onnx)).name}: NaN/Inf outputs on the run's "
                            f"calibration data while timing it ({e}); please report this run") from None
    return [max(p50(t, k, b) / p50(t, "twin", b) for b in job.cfg.batches) for k in named]


def _rewrite(job: Job) -> None:
    """Plan and rewrite (or, for an already compressed run, take the model as it is)."""
    cfg, o = job.cfg, job.o
    if job.already:  # int8 of a compressed run: the model as it is
        o.plan, o.cmodel, job.spec = None, copy.deepcopy(o.model), get_spec(o.model)
    else:
        o.plan = plan(o.model, job.scores, float(job.threshold), job.align, cfg.drop_branches, job.structure,
                      keep=job.keep)
        o.cmodel, job.spec = compress_model(o.model, o.plan, job.scores, cfg.split, cfg.shortcut)
    job.changed = bool(job.spec["layers"]) and not job.already
    if cfg.bn_recalibrate and job.changed:
        from quadexport.compress.rewrite import recalibrate_bn

        recalibrate_bn(o.cmodel, job.calib)
    with torch.no_grad():
        o.rel = outputs_rel(o.cmodel(job.calib[:256]), o.model(job.calib[:256]))
    if o.plan is not None:
        layers = o.plan.layers.values()
        job.say(f"== threshold {job.threshold:.4g}: {sum(p.k for p in layers)}/{sum(p.channels for p in layers)} "
                f"quadratic channels kept, MACs ×{macs(o.cmodel, job.shape) / o.macs_twin:.2f} of the ReLU twin, "
                f"calibration logits rel. change {o.rel:.2e}")


def _finetune_and_fold(job: Job) -> None:
    """Fine-tuning (when something changed), BatchNorm folding into mixed layers, final accuracies and MACs."""
    cfg, o, data = job.cfg, job.o, job.data
    o.ft_hist = []
    acc = job.accuracy
    if cfg.finetune_epochs and job.changed:
        o.acc_pruned = data.accuracy(o.cmodel, "test") if acc else None
        if acc:
            job.say(f"   pruned test accuracy before fine-tuning {100 * o.acc_pruned:.2f}% "
                    f"(original {100 * o.acc_orig:.2f}%)")
        from quadexport.compress.finetune import finetune

        job.say(f"== fine-tune {cfg.finetune_epochs} epoch(s) on {len(data.fit)} "
                f"{'training images' if data.source is not None else 'random inputs'}"
                f"{f' (task loss {cfg.task_loss})' if data.task is not None else ''}")
        o.ft_hist = finetune(o.cmodel, data.fit, job.meta.get("train_config") or {}, cfg.finetune_epochs,
                             lr=cfg.finetune_lr, progress=job.bar, log=job.say, workers=data.workers,
                             loss_fn=data.batch_loss if data.task is not None else None)
    else:
        o.acc_pruned = None
    o.folded = fold_mixed_bn(o.cmodel, job.spec, job.structure) if not job.already else []
    o.cmodel.eval()
    o.acc_final = (data.accuracy(o.cmodel, "test") if job.changed else o.acc_orig) if acc else None
    if o.acc_pruned is None:  # no fine-tuning: the pruned model is the final one (BN folding aside)
        o.acc_pruned = o.acc_final
    if o.val.get("samples") and acc:
        o.val["final"] = data.accuracy(o.cmodel, "val") if job.changed else o.val["original"]
    elif o.val.get("samples"):
        o.val["final_loss"] = data.loss(o.cmodel, "val") if job.changed else o.val["original_loss"]
    if acc:
        job.say(f"   test accuracy {100 * o.acc_final:.2f}% (original {100 * o.acc_orig:.2f}%, "
                f"{100 * (o.acc_final - o.acc_orig):+.2f} pp)")
    elif o.val.get("samples"):
        job.say(f"   validation {cfg.task_loss} {o.val['final_loss']:.4g} (original {o.val['original_loss']:.4g})")
    o.macs_c = macs(o.cmodel, job.shape)


def _measure(job: Job, acc: float | None, val: dict[str, Any]) -> str:
    """The original model's measure in words: test accuracy, or the validation task loss."""
    if acc is not None:
        return f"test accuracy {100 * acc:.2f}%"
    loss = val.get("original_loss", float("nan"))
    return f"validation {job.cfg.task_loss} {loss:.4g} (no accuracy: not a classifier)"


def _val_drop_pp(job: Job) -> float | None:
    v = job.o.val
    return 100 * (v["original"] - v["final"]) if v.get("samples") and v.get("final") is not None else None


def _within_budget(job: Job) -> bool:
    drop = _val_drop_pp(job)
    return job.cfg.max_drop is None or drop is None or drop <= job.cfg.max_drop + 1e-9


def _targets(job: Job) -> None:
    """What the targets were, what was reached, and (in plain words) which were missed."""
    cfg, o = job.cfg, job.o
    drop = _val_drop_pp(job)
    reached = job.searched_cost
    if cfg.cost == "latency" and o.timing is not None:
        from quadexport.compress.latency import p50

        reached = max(p50(o.timing, "compressed", b) / p50(o.timing, "relu_twin", b) for b in cfg.batches)
    elif cfg.cost == "macs" and o.macs_twin:
        reached = o.macs_c / o.macs_twin
    missed = []
    if cfg.max_drop is not None and drop is not None and drop > cfg.max_drop + 1e-9:
        missed.append(f"--max-drop {cfg.max_drop:g} pp: validation accuracy dropped {drop:.2f} pp "
                      f"({100 * o.val['original']:.2f}% → {100 * o.val['final']:.2f}%)")
    if cfg.target_ratio is not None and reached is not None and reached > cfg.target_ratio + 1e-9:
        missed.append(f"--target-ratio {cfg.target_ratio:g} ({cfg.cost} vs the ReLU twin): reached {reached:.2f}×")
    o.targets = {"max_drop_pp": cfg.max_drop, "val_drop_pp": drop, "target_ratio": cfg.target_ratio,
                 "cost": cfg.cost, "reached_ratio": reached, "missed": missed}
    for m in missed:
        job.say(f"   MISSED {m}")
