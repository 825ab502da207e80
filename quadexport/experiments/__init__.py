"""The experiments of issue #6 (trainability, accuracy, expressivity, warm start) and their report.

Level L4 beside :mod:`quadexport.pipeline`, whose recipe format (:func:`quadexport.pipeline.load_recipe`) they
share: ``models/exp-*.toml`` are recipes that declare ``experiments = [...]``. Modules:

- :mod:`~quadexport.experiments.recipes`: which recipe each experiment reads, budgets;
- :mod:`~quadexport.experiments.runner`: :class:`Task`, one training run, the cached process-pool runner;
- :mod:`~quadexport.experiments.trainability`, :mod:`~.accuracy`, :mod:`~.warmstart`, :mod:`~.expressivity`:
  each experiment's tasks and aggregation;
- :mod:`~quadexport.experiments.suite`: run experiments end to end, write ``<exp>.json``, re-aggregate, report;
- :mod:`~quadexport.experiments.report` (+ ``report_sections``, ``report_plots``): ``docs/results.md`` and figures;
- :mod:`~quadexport.experiments.studies`: the compression study (:mod:`~.compression`, ``compression_sweeps``,
  ``compression_bench``, ``compression_report``, ``compression_plots``; docs/compression.md) and the quadratize study
  (:mod:`~.quadratize_study`, ``quadratize_report``; docs/quadratize.md), ``models/exp-<study>.toml``;
- :mod:`~quadexport.experiments.onnx_rewrites`, :mod:`~.ort_profile`: graph rewrites and per-op profiles of the
  compression-overhead study (``tools/compress_overhead.py``).

Command line: ``tools/experiments.py {trainability,accuracy,expressivity,warmstart,all,report}`` (``make results``),
the same as ``quadexport experiments ...``; ``quadexport experiments {compression,quadratize}`` for the studies.
"""

from __future__ import annotations

from quadexport.experiments.recipes import BUDGETS, EXPERIMENTS, SCHEMA_VERSION, STUDIES, load_experiment_recipe
from quadexport.experiments.runner import Task, classify, run_tasks, run_train, train_task
from quadexport.experiments.stats import fmt_ms, mean_std
from quadexport.experiments.studies import run_study
from quadexport.experiments.suite import Envelope, ExperimentOptions, reaggregate, report, run_experiments

__all__ = ["BUDGETS", "EXPERIMENTS", "SCHEMA_VERSION", "STUDIES", "Envelope", "ExperimentOptions", "Task", "classify",
           "fmt_ms", "load_experiment_recipe", "mean_std", "reaggregate", "report", "run_experiments", "run_study",
           "run_tasks", "run_train", "train_task"]
