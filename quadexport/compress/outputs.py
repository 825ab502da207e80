"""The output stages of a compression: write the run dir (checkpoint, config, metrics, fp32 ONNX), check parity,
quantise to int8, take the trained ReLU twin, measure latency."""

from __future__ import annotations

import copy
from pathlib import Path

from quadexport.compress.job import Job, export_onnx

FP32_ONNX, INT8_ONNX = "model.onnx", "model.int8.onnx"

__all__ = ["FP32_ONNX", "INT8_ONNX", "bench", "int8", "parity", "trained_twin", "write_run"]


def write_run(job: Job) -> Path:
    """The new run dir: checkpoint, config, metrics and the fp32 ONNX export (returned)."""
    from quadexport.runs.write import write_run

    cfg, o, meta, out = job.cfg, job.o, job.meta, job.dir
    out.mkdir(parents=True, exist_ok=True)
    cmeta = dict(meta)
    cmeta.update(test_acc=o.acc_final, compressed_from=str(o.run_dir), uncompressed_test_acc=o.acc_orig,
                 compression={"threshold": job.threshold, "target_ratio": cfg.target_ratio, "cost": cfg.cost,
                              "finetune_epochs": len(o.ft_hist), "quantize": cfg.quantize,
                              "keep_fp32": cfg.keep_fp32, "align": job.align, "split": cfg.split,
                              "shortcut": cfg.shortcut, "calib_samples": cfg.calib_samples,
                              "max_drop": cfg.max_drop, "val_samples": o.val.get("samples"),
                              "task_loss": cfg.task_loss,
                              "bn_recalibrated": bool(cfg.bn_recalibrate and job.changed),
                              "source_compression": meta.get("compression")})
    if cfg.quantize:
        cmeta["int8_onnx"] = INT8_ONNX
    o.cmodel.quadexport_meta = cmeta
    config = {"compression": cmeta["compression"], "source": str(o.run_dir), "train_config": meta.get("train_config")}
    metrics = {"model": o.cmodel.quadexport_config.get("name"), "neuron": o.cmodel.quadexport_config.get("neuron"),
               "dataset": meta.get("dataset"), "test_acc": o.acc_final, "uncompressed_test_acc": o.acc_orig,
               "pruned_test_acc": o.acc_pruned, "finetune": o.ft_hist, "epochs": []}
    write_run(job.run if job.run is not None else out, o.cmodel, cmeta, config=config, metrics=metrics,
              epoch=int(job.ckpt.get("epoch", 0)), extra={"compressed": True}, commit=False)
    return export_onnx(o.cmodel, out / FP32_ONNX, job.shape)


def parity(job: Job, fp32_path: Path) -> None:
    from quadexport.check import check as run_check

    # the real-data lines on the test split already open (any dataset kind: no second scan of a folder)
    src = job.data.source if job.data.source is not None else False  # no dataset: random inputs only
    rep = run_check(fp32_path, job.o.cmodel, batches=(1, 3, 64), verbose=False, dataset=src)
    rep.onnx_path = str(job.o.out / FP32_ONNX)  # where it will be once the staged run is in place
    rep.save(job.dir / "parity.json")
    job.o.parity = {"ok": rep.ok, "worst_rel_l2": rep.worst_rel_l2, "worst_err_fp64": rep.worst_err_fp64,
                    "worst_floor": rep.worst_floor}
    fp64 = (f", vs float64 {rep.worst_err_fp64:.1e}, float32 floor {rep.worst_floor:.1e}"
            if rep.worst_err_fp64 is not None else "")
    job.say(f"== parity of {fp32_path}: {'ok' if rep.ok else 'FAILED'} (worst rel_l2 {rep.worst_rel_l2:.1e}{fp64})")


def int8(job: Job, fp32_path: Path) -> None:
    from quadexport.compress.quant import compare_int8, quantize_int8

    cfg, out = job.cfg, job.dir
    job.say(f"== int8 static quantisation (keep fp32: {cfg.keep_fp32})")
    info = quantize_int8(fp32_path, out / INT8_ONNX, job.calib.numpy(), keep_fp32=cfg.keep_fp32)
    cmp = compare_int8(out / INT8_ONNX, fp32_path, job.data.batches("test"), threads=cfg.threads)
    job.o.int8 = {**info, "path": INT8_ONNX, **cmp}
    job.say(f"   int8 test accuracy {100 * cmp['test_acc']:.2f}% (fp32 {100 * cmp['fp32_onnx_test_acc']:.2f}%), "
            f"logits rel_l2 {cmp['rel_l2_vs_fp32']:.3f}")


def trained_twin(job: Job) -> None:
    """The trained ReLU twin given by the user: its accuracy, and it replaces the zoo-built twin for timing."""
    from quadexport.runs.checkpoint import load

    tm = load(job.cfg.twin)
    acc = tm.quadexport_meta.get("test_acc")
    job.o.twin_acc = float(acc) if acc is not None else job.data.accuracy(tm, "test") if job.accuracy else None
    job.twin_model = tm


def bench(job: Job, fp32_path: Path) -> None:
    """Interleaved onnxruntime latency of the original, compressed (int8) model and the ReLU twin."""
    from quadexport.compress.latency import time_onnx

    cfg, shape = job.cfg, job.shape
    job.say(f"== latency (onnxruntime CPU, interleaved, batches {list(cfg.batches)})")
    bdir = job.dir / "bench"
    files = {"original": export_onnx(job.o.model, bdir / "original.onnx", shape),
             "compressed": fp32_path, "relu_twin": export_onnx(job.twin_model, bdir / "relu_twin.onnx", shape)}
    if cfg.quantize:
        files["compressed_int8"] = job.dir / INT8_ONNX
    if cfg.shortcut == "conv":
        from quadexport.compress.permute import conv_shortcuts
        from quadexport.compress.structure import describe

        twin = copy.deepcopy(job.twin_model)
        files["relu_twin_convsc"] = export_onnx(conv_shortcuts(twin, describe(twin, shape)),
                                                bdir / "relu_twin_convsc.onnx", shape)
    job.o.timing = time_onnx(files, shape, cfg.batches, cfg.threads, min_seconds=cfg.min_seconds,
                             inputs=job.calib)  # timed on the run's calibration data
