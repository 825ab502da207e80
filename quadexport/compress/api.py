"""``compress(run_dir, out, ...)``: prune quadratic terms, optionally fine-tune and quantise, write a run dir and a
report (``compress_report.json`` / ``.md``)."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from quadexport.compress.config import DEFAULT_THRESHOLD, CompressConfig, CompressError
from quadexport.compress.plan import Plan, nchwc_block, plan, search_threshold
from quadexport.compress.report import CompressOutcome, build_report, render_report
from quadexport.compress.rewrite import compress_model, fold_mixed_bn
from quadexport.compress.stats import channel_scores, collect_stats
from quadexport.zoo._prune import get_spec

log = logging.getLogger(__name__)

REPORT_JSON, REPORT_MD = "compress_report.json", "compress_report.md"
FP32_ONNX, INT8_ONNX = "model.onnx", "model.int8.onnx"


def _macs(model: nn.Module, shape: Sequence[int]) -> int:
    from quadexport.zoo import count_macs

    return count_macs(model, tuple(shape))


def twin_of(model: nn.Module) -> nn.Module:
    """The ReLU twin (same builder and options, ``neuron="relu"``, fresh weights) of a zoo model."""
    from quadexport.zoo import create_model

    cfg = {k: v for k, v in model.quadexport_config.items() if k != "compress"}
    name = cfg.pop("name")
    cfg["neuron"] = "relu"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model(name, **cfg).eval()


def calibration_data(meta: dict[str, Any], n: int, data_dir: str | None = None, seed: int = 0):
    """``(calibration images, dataset)``: ``n`` images drawn (seeded) from the run's training subset, and the
    dataset (training subset as in the run, full test split)."""
    from quadexport.data import load_dataset

    tc = meta.get("train_config") or {}
    ds = load_dataset(meta["dataset"], data_dir=data_dir or tc.get("data_dir"), train_subset=tc.get("train_subset"),
                      test_subset=tc.get("test_subset"), seed=int(tc.get("seed", 0)))
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(ds.x_train), generator=g)[:int(n)]
    return ds.x_train[idx], ds


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from quadexport.train import evaluate

    return float(evaluate(model, x, y, torch.device("cpu"))[1])


def _export(model: nn.Module, path: Path, shape: Sequence[int]) -> Path:
    from quadexport.export import export

    return export(model, path, mode="decomposed", input_shape=tuple(shape))


def compress(run_dir: str | Path, out: str | Path, *, threshold: float | None = None,
             target_ratio: float | None = None, cost: str = "macs", quantize: str | None = None,
             keep_fp32: str = "none", finetune_epochs: int = 0, finetune_lr: float | None = None,
             calib_samples: int = 1024, align: int | None = None, split: str = "conv", shortcut: str = "auto",
             drop_branches: bool = True, bn_recalibrate: bool = False,
             bench: bool = True, batches: Sequence[int] = (1, 64), threads: int | None = None,
             min_seconds: float = 1.0, twin: str | Path | None = None, data_dir: str | None = None,
             check: bool = True, overwrite: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Compress a trained quadratic run into a new run dir (see ``docs/compression.md``).

    Args:
        run_dir: the trained run (quadratic model, e.g. QResNet20 Fan with ReLinear).
        out: the new run dir (checkpoint.pt rebuilds the compressed architecture; ``model.onnx``,
            ``model.int8.onnx`` if quantised, ``compress_report.json``/``.md``).
        threshold: prune channels whose quadratic contribution score is below this (default 0.05 unless
            ``target_ratio`` or only ``quantize`` is given).
        target_ratio: instead of a threshold: the largest-threshold-free plan whose cost vs the ReLU twin is at most
            this (``cost="macs"``: MAC ratio; ``"latency"``: measured onnxruntime p50 ratio, worst of ``batches``).
        cost: ``"macs"`` or ``"latency"`` (for ``target_ratio``).
        quantize: ``None`` or ``"int8"`` (static QDQ, calibrated on ``calib_samples`` training images).
        keep_fp32: int8: ``"none"``, ``"products"`` or ``"quadratic"`` (:mod:`quadexport.compress.quant`).
        finetune_epochs: fine-tune the pruned model for this many epochs with the run's recipe.
        finetune_lr: fine-tuning base LR (default: the run's LR × 0.1).
        calib_samples: calibration images (from the run's training subset).
        align: quadratic-prefix alignment of conv layers (default: onnxruntime's NCHWc block, 16 on AVX-512).
        split: ``"conv"`` or ``"slice"`` (:class:`~quadexport.layers.mixed.MixedQuad`).
        shortcut: ``"auto"`` or ``"conv"`` (:func:`~quadexport.compress.rewrite.compress_model`; with ``"conv"`` the
            report also times the ReLU twin with the same shortcut rewrite).
        drop_branches: let layers drop an unneeded ``b``/``g`` branch.
        bn_recalibrate: after pruning (if a layer changed), re-estimate the BatchNorm statistics on the
            calibration images (corrects the drift of later layers' inputs; measured on QResNet20: +0.5 pp when
            every channel is linearised, ±0.15 pp noise at moderate thresholds - so off by default).
        bench: measure onnxruntime latency of the original, compressed (and int8) model and the ReLU twin.
        batches: batch sizes of the latency measurement.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        min_seconds: timed seconds per model and batch.
        twin: run dir of the trained ReLU twin (its accuracy goes into the report; default: a zoo-built twin for
            timing only).
        data_dir: dataset location override.
        check: run the onnxruntime parity check of the fp32 export (``parity.json``).
        overwrite: replace an existing ``out``.
        verbose: log progress at INFO (else DEBUG) on the ``quadexport.compress.api`` logger.

    Returns:
        The report dict (also written to ``out``).
    """
    cfg = CompressConfig(threshold=threshold, target_ratio=target_ratio, cost=cost, quantize=quantize,
                         keep_fp32=keep_fp32, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                         calib_samples=calib_samples, align=align, split=split, shortcut=shortcut,
                         drop_branches=drop_branches, bn_recalibrate=bn_recalibrate, bench=bench, batches=batches,
                         threads=threads, min_seconds=min_seconds, twin=None if twin is None else str(twin),
                         data_dir=data_dir, check=check, overwrite=overwrite, verbose=verbose)
    return compress_run(run_dir, out, cfg)


@dataclass
class _Job:
    """One compression in progress: options, the source run and what has been measured so far."""

    cfg: CompressConfig
    ckpt: dict[str, Any]
    meta: dict[str, Any]
    shape: tuple[int, ...]
    align: int
    already: bool  # the source run is itself compressed: int8 only
    o: CompressOutcome
    threshold: float | None = None
    calib: torch.Tensor | None = None
    ds: Any = None
    twin_model: nn.Module | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | None = None
    changed: bool = False
    structure: Any = None
    unresolved: list[str] = field(default_factory=list)

    def say(self, msg: str) -> None:
        log.log(logging.INFO if self.cfg.verbose else logging.DEBUG, msg)


def compress_run(run_dir: str | Path, out: str | Path, cfg: CompressConfig) -> dict[str, Any]:
    """:func:`compress` with its options as a :class:`~quadexport.compress.config.CompressConfig`."""
    t_start = time.perf_counter()
    job = _open(Path(run_dir), Path(out), cfg)
    tmp = Path(tempfile.mkdtemp(prefix="quadexport-compress-"))
    try:
        _calibrate(job)
        _prune(job, tmp)
        _finetune_and_fold(job)
        fp32_path = _write_run(job)
        if cfg.check:
            _parity(job, fp32_path)
        if cfg.quantize:
            _int8(job, fp32_path)
        if cfg.twin is not None:
            _trained_twin(job)
        if cfg.bench:
            _bench(job, fp32_path)
        job.o.seconds = time.perf_counter() - t_start
        report = build_report(job.o)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from quadexport.checkpoint import write_json

    out = job.o.out
    write_json(out / REPORT_JSON, report)
    (out / REPORT_MD).write_text(render_report(report))
    job.say(f"== wrote {out} ({REPORT_MD})")
    return report


def _open(run_dir: Path, out: Path, cfg: CompressConfig) -> _Job:
    """Check the paths, load the source run."""
    from quadexport.checkpoint import build_from_checkpoint, read_checkpoint

    if out.resolve() == run_dir.resolve():
        raise CompressError("--out must be a new run dir, not the input run dir")
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise CompressError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(out)
    ckpt = read_checkpoint(run_dir)
    model = build_from_checkpoint(ckpt).eval()
    already = get_spec(model) is not None
    if already and (cfg.target_ratio is not None or cfg.threshold or cfg.finetune_epochs or not cfg.quantize):
        raise CompressError(f"{run_dir} is already compressed: only --quantize int8 (without pruning or "
                            f"fine-tuning) applies to it; compress the original run instead")
    meta = dict(ckpt["meta"])
    if not meta.get("dataset"):
        raise CompressError(f"{run_dir} has no dataset in its metadata; cannot calibrate")
    shape = tuple(int(v) for v in meta["input_shape"])
    align = nchwc_block() if cfg.align is None else int(cfg.align)
    return _Job(cfg, ckpt, meta, shape, align, already, CompressOutcome(run_dir, out, model),
                threshold=cfg.initial_threshold())


def _calibrate(job: _Job) -> dict[str, Any]:
    """Calibration images, the original accuracy, channel scores, MACs; returns the scores."""
    cfg, o, meta = job.cfg, job.o, job.meta
    job.say(f"== calibrate on {cfg.calib_samples} {meta['dataset']} training images")
    job.calib, job.ds = calibration_data(meta, cfg.calib_samples, cfg.data_dir)
    t0 = time.perf_counter()
    tc = meta.get("train_config") or {}
    if isinstance(meta.get("test_acc"), float) and tc and tc.get("test_subset") is None and not cfg.data_dir:
        o.acc_orig = float(meta["test_acc"])  # the run's own evaluation on this same (full) test split
    else:
        o.acc_orig = _accuracy(o.model, job.ds.x_test, job.ds.y_test)
    job.scores = channel_scores(collect_stats(o.model, job.calib) if not job.already else {})
    if not job.scores and not job.already:
        raise CompressError(f"{o.run_dir}: no Fan-form quadratic layer to prune "
                            f"(neuron {o.model.quadexport_config.get('neuron')!r})")
    job.say(f"   original test accuracy {100 * o.acc_orig:.2f}% ({time.perf_counter() - t0:.0f} s)")
    if not job.already:
        from quadexport.compress.permute import verify_permutations
        from quadexport.compress.structure import describe

        job.structure = describe(o.model, job.shape)
        job.unresolved = verify_permutations(o.model, job.structure, job.calib[:4])
    job.twin_model = twin_of(o.model)
    o.macs_twin = _macs(job.twin_model, job.shape)
    o.macs_orig = _macs(o.model, job.shape)
    return job.scores


def _search(job: _Job, tmp: Path) -> None:
    """Find the threshold that meets ``cfg.target_ratio`` (MACs or measured latency vs the ReLU twin)."""
    cfg, o, shape = job.cfg, job.o, job.shape
    job.say(f"== search the threshold for a {cfg.cost} ratio <= {cfg.target_ratio} vs the ReLU twin")
    twin_onnx = _export(job.twin_model, tmp / "twin.onnx", shape) if cfg.cost == "latency" else None

    def cost_fn(p: Plan) -> float:
        cm, _ = compress_model(o.model, p, job.scores, cfg.split, cfg.shortcut)
        if cfg.cost == "macs":
            return _macs(cm, shape) / o.macs_twin
        from quadexport.compress.latency import p50, time_onnx

        fold_mixed_bn(cm, json.loads(cm.quadexport_config["compress"]), p.structure)
        path = _export(cm, tmp / "cand.onnx", shape)
        t = time_onnx({"c": path, "t": twin_onnx}, shape, cfg.batches, cfg.threads, min_seconds=0.5)
        return max(p50(t, "c", b) / p50(t, "t", b) for b in cfg.batches)

    job.threshold, o.trace = search_threshold(o.model, job.scores, float(cfg.target_ratio), cost_fn, job.align,
                                              cfg.drop_branches, max_steps=40 if cfg.cost == "macs" else 7,
                                              log=job.say, structure=job.structure)


def _prune(job: _Job, tmp: Path) -> None:
    """Plan and rewrite (or, for an already compressed run, take the model as it is)."""
    cfg, o = job.cfg, job.o
    if cfg.target_ratio is not None:
        _search(job, tmp)
    if job.already:  # int8 of a compressed run: the model as it is
        o.plan, o.cmodel, job.spec = None, copy.deepcopy(o.model), get_spec(o.model)
    else:
        o.plan = plan(o.model, job.scores, float(job.threshold), job.align, cfg.drop_branches, job.structure)
        o.cmodel, job.spec = compress_model(o.model, o.plan, job.scores, cfg.split, cfg.shortcut)
    job.changed = bool(job.spec["layers"]) and not job.already
    if cfg.bn_recalibrate and job.changed:
        from quadexport.compress.rewrite import recalibrate_bn

        recalibrate_bn(o.cmodel, job.calib)
    with torch.no_grad():
        ref = o.model(job.calib[:256])
        o.rel = float((o.cmodel(job.calib[:256]) - ref).norm() / ref.norm())
    if o.plan is not None:
        layers = o.plan.layers.values()
        job.say(f"== threshold {job.threshold:.4g}: {sum(p.k for p in layers)}/{sum(p.channels for p in layers)} "
                f"quadratic channels kept, MACs ×{_macs(o.cmodel, job.shape) / o.macs_twin:.2f} of the ReLU twin, "
                f"calibration logits rel. change {o.rel:.2e}")


def _finetune_and_fold(job: _Job) -> None:
    """Optional fine-tuning, BatchNorm folding into mixed layers, final accuracy and MACs."""
    cfg, o, ds = job.cfg, job.o, job.ds
    if cfg.finetune_epochs:
        o.acc_pruned = _accuracy(o.cmodel, ds.x_test, ds.y_test)
        job.say(f"   pruned test accuracy before fine-tuning {100 * o.acc_pruned:.2f}% "
                f"(original {100 * o.acc_orig:.2f}%)")
        from quadexport.compress.finetune import finetune

        job.say(f"== fine-tune {cfg.finetune_epochs} epoch(s)")
        tc = job.meta.get("train_config") or {}
        o.ft_hist = finetune(o.cmodel, ds.x_train, ds.y_train, ds.x_test, ds.y_test, tc, cfg.finetune_epochs,
                             lr=cfg.finetune_lr, seed=int(tc.get("seed", 0)), log=job.say)
    o.folded = fold_mixed_bn(o.cmodel, job.spec, job.structure) if not job.already else []
    o.cmodel.eval()
    if job.changed or cfg.finetune_epochs:
        o.acc_final = _accuracy(o.cmodel, ds.x_test, ds.y_test)
    else:  # nothing changed (e.g. int8 only): the fp32 model is the input run's
        o.acc_final = o.acc_orig
    if o.acc_pruned is None:  # no fine-tuning: the pruned model is the final one (BN folding aside)
        o.acc_pruned = o.acc_final
    job.say(f"   test accuracy {100 * o.acc_final:.2f}% (original {100 * o.acc_orig:.2f}%, "
            f"{100 * (o.acc_final - o.acc_orig):+.2f} pp)")
    o.macs_c = _macs(o.cmodel, job.shape)


def _write_run(job: _Job) -> Path:
    """The new run dir: checkpoint, config, metrics and the fp32 ONNX export (returned)."""
    from quadexport.checkpoint import save_checkpoint, write_json

    cfg, o, meta, out = job.cfg, job.o, job.meta, job.o.out
    out.mkdir(parents=True, exist_ok=True)
    cmeta = dict(meta)
    cmeta.update(test_acc=o.acc_final, compressed_from=str(o.run_dir), uncompressed_test_acc=o.acc_orig,
                 compression={"threshold": job.threshold, "target_ratio": cfg.target_ratio, "cost": cfg.cost,
                              "finetune_epochs": cfg.finetune_epochs, "quantize": cfg.quantize,
                              "keep_fp32": cfg.keep_fp32, "align": job.align, "split": cfg.split,
                              "shortcut": cfg.shortcut, "calib_samples": cfg.calib_samples,
                              "bn_recalibrated": bool(cfg.bn_recalibrate and job.changed),
                              "source_compression": meta.get("compression")})
    if cfg.quantize:
        cmeta["int8_onnx"] = INT8_ONNX
    save_checkpoint(out, o.cmodel, cmeta, None, int(job.ckpt.get("epoch", 0)), {"compressed": True})
    o.cmodel.quadexport_meta = cmeta
    write_json(out / "config.json", {"compression": cmeta["compression"], "source": str(o.run_dir),
                                     "train_config": meta.get("train_config")})
    write_json(out / "metrics.json", {"model": o.cmodel.quadexport_config.get("name"),
                                      "neuron": o.cmodel.quadexport_config.get("neuron"),
                                      "dataset": meta["dataset"], "test_acc": o.acc_final,
                                      "uncompressed_test_acc": o.acc_orig, "pruned_test_acc": o.acc_pruned,
                                      "finetune": o.ft_hist, "epochs": []})
    return _export(o.cmodel, out / FP32_ONNX, job.shape)


def _parity(job: _Job, fp32_path: Path) -> None:
    from quadexport.check import check as run_check

    rep = run_check(fp32_path, job.o.cmodel, batches=(1, 3, 64), verbose=False, dataset=job.meta["dataset"],
                    data_dir=job.cfg.data_dir)
    rep.save(job.o.out / "parity.json")
    job.o.parity = {"ok": rep.ok, "worst_rel_l2": rep.worst_rel_l2}
    job.say(f"== parity of {fp32_path}: {'ok' if rep.ok else 'FAILED'} (worst rel_l2 {rep.worst_rel_l2:.1e})")


def _int8(job: _Job, fp32_path: Path) -> None:
    from quadexport.compress.quant import onnx_accuracy, quantize_int8

    cfg, out, ds = job.cfg, job.o.out, job.ds
    job.say(f"== int8 static quantisation (keep fp32: {cfg.keep_fp32})")
    info = quantize_int8(fp32_path, out / INT8_ONNX, job.calib.numpy(), keep_fp32=cfg.keep_fp32)
    acc8, logits8 = onnx_accuracy(out / INT8_ONNX, ds.x_test.numpy(), ds.y_test.numpy(), threads=cfg.threads)
    acc32, logits32 = onnx_accuracy(fp32_path, ds.x_test.numpy(), ds.y_test.numpy(), threads=cfg.threads)
    rel8 = float(np.linalg.norm(logits8 - logits32) / np.linalg.norm(logits32))
    job.o.int8 = {**info, "path": INT8_ONNX, "test_acc": acc8, "fp32_onnx_test_acc": acc32, "rel_l2_vs_fp32": rel8,
                  "top1_agreement": float((logits8.argmax(1) == logits32.argmax(1)).mean())}
    job.say(f"   int8 test accuracy {100 * acc8:.2f}% (fp32 {100 * acc32:.2f}%), logits rel_l2 {rel8:.3f}")


def _trained_twin(job: _Job) -> None:
    """The trained ReLU twin given by the user: its accuracy, and it replaces the zoo-built twin for timing."""
    from quadexport.checkpoint import load

    tm = load(job.cfg.twin)
    acc = tm.quadexport_meta.get("test_acc")
    job.o.twin_acc = float(acc) if acc is not None else _accuracy(tm, job.ds.x_test, job.ds.y_test)
    job.twin_model = tm


def _bench(job: _Job, fp32_path: Path) -> None:
    from quadexport.compress.latency import time_onnx

    cfg, shape = job.cfg, job.shape
    job.say(f"== latency (onnxruntime CPU, interleaved, batches {list(cfg.batches)})")
    bdir = job.o.out / "bench"
    files = {"original": _export(job.o.model, bdir / "original.onnx", shape),
             "compressed": fp32_path, "relu_twin": _export(job.twin_model, bdir / "relu_twin.onnx", shape)}
    if cfg.quantize:
        files["compressed_int8"] = job.o.out / INT8_ONNX
    if cfg.shortcut == "conv":
        from quadexport.compress.permute import conv_shortcuts

        from quadexport.compress.structure import describe

        files["relu_twin_convsc"] = _export(conv_shortcuts(copy.deepcopy(job.twin_model),
                                                           describe(job.twin_model, shape)),
                                            bdir / "relu_twin_convsc.onnx", shape)
    job.o.timing = time_onnx(files, shape, cfg.batches, cfg.threads, min_seconds=cfg.min_seconds)


__all__ = ["CompressConfig", "CompressError", "DEFAULT_THRESHOLD", "FP32_ONNX", "INT8_ONNX", "REPORT_JSON",
           "REPORT_MD", "build_report", "calibration_data", "compress", "compress_run", "render_report",
           "search_threshold", "twin_of"]
