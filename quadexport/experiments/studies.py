"""Run the studies end to end (``quadexport experiments compression|quadratize``): every step resumable, then the
aggregated ``<out>/<study>.json``, the tables and the figures (under ``<docs>``: ``docs/`` for the ``small`` budget,
``<out>/docs`` otherwise, as for the experiments' report)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from quadexport.experiments.recipes import ROOT, STUDIES
from quadexport.experiments.suite import ExperimentOptions

log = logging.getLogger(__name__)


def docs_dir(opts: ExperimentOptions) -> Path:
    """Where a report writes: ``--docs``, else ``docs/`` for the ``small`` budget and ``<out>/docs`` otherwise."""
    return Path(opts.docs) if opts.docs else (ROOT / "docs" if opts.budget == "small" else opts.out_dir / "docs")


def run_compression(opts: ExperimentOptions, command: str) -> Path:
    """The compression study (:mod:`~quadexport.experiments.compression`); returns the table's path."""
    from quadexport.experiments.compression import CompressionStudy, compress_variants, control, train_models
    from quadexport.experiments.compression_bench import entries, time_all
    from quadexport.experiments.compression_report import write_report
    from quadexport.experiments.compression_sweeps import latsweep, sweep

    t0 = time.perf_counter()
    study = CompressionStudy.load(opts.budget, opts.out_dir, opts.jobs, opts.threads)
    log.info("== compression (%s) -> %s", opts.budget, study.out)
    records = train_models(study)
    control(study)
    variants = compress_variants(study)
    sweep(study)
    latsweep(study)
    timings = time_all(study, entries(study, records, variants))
    return write_report(study, timings, records, docs_dir(opts), command, time.perf_counter() - t0)


def run_quadratize(opts: ExperimentOptions, command: str) -> Path:
    """The quadratize study (:mod:`~quadexport.experiments.quadratize_study`); returns the table's path."""
    from quadexport.experiments.quadratize_report import write_report
    from quadexport.experiments.quadratize_study import QuadratizeStudy, bench_runs, steptime, train_runs

    t0 = time.perf_counter()
    study = QuadratizeStudy.load(opts.budget, opts.out_dir, opts.jobs, opts.threads)
    log.info("== quadratize (%s) -> %s", opts.budget, study.out)
    records = train_runs(study)
    latency = bench_runs(study, records)
    step = steptime(study)
    return write_report(study, records, latency, step, docs_dir(opts), command, time.perf_counter() - t0)


def run_study(name: str, opts: ExperimentOptions, command: str | None = None) -> Path:
    """Run study ``name`` (one of :data:`~quadexport.experiments.recipes.STUDIES`)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {STUDIES}")
    cmd = command or f"quadexport experiments {name} --budget {opts.budget}"
    return (run_compression if name == "compression" else run_quadratize)(opts, cmd)


__all__ = ["docs_dir", "run_compression", "run_quadratize", "run_study"]
