"""``quadexport experiments {trainability,accuracy,expressivity,warmstart,all,report}``: the issue #6 experiments;
``quadexport experiments {compression,quadratize}``: the studies of docs/compression.md and docs/quadratize.md.

Also the whole of ``tools/experiments.py`` (``make results``), through :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Iterator

COMMANDS = ("trainability", "accuracy", "expressivity", "warmstart", "all", "report", "compression", "quadratize", "lm")


@contextlib.contextmanager
def echo_logs(*names: str) -> Iterator[None]:
    """Print the INFO records of the loggers ``names`` on stdout, message only (the progress lines of a command)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield
    finally:
        handler.flush()
        for lg, (level, propagate) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def run(a: argparse.Namespace) -> int:
    from quadexport.experiments import EXPERIMENTS, STUDIES, ExperimentOptions, report, run_experiments, run_study

    opts = ExperimentOptions(budget=a.budget, out=a.out, docs=a.docs, jobs=a.jobs, threads=a.threads)
    with echo_logs("quadexport.experiments"):
        if a.experiment == "lm":  # the language-model study (issue #31): its own recipe, runs and report
            from pathlib import Path

            from quadexport.experiments.lm_report import lm_experiment
            from quadexport.experiments.recipes import ROOT

            cmd = "quadexport experiments lm" + "".join(f" --{k} {v}" for k, v in (
                ("budget", a.budget), ("out", a.out), ("docs", a.docs), ("jobs", a.jobs), ("threads", a.threads))
                if v is not None and (k, v) not in (("budget", "small"), ("jobs", 2), ("threads", 1)))
            docs = Path(a.docs) if a.docs else (ROOT / "docs" if a.budget == "small" else opts.out_dir / "docs")
            print(lm_experiment(a.budget, opts.out_dir / "lm-study", docs, a.jobs, a.threads, cmd))
        elif a.experiment in STUDIES:
            run_study(a.experiment, opts, f"quadexport experiments {a.experiment} --budget {a.budget}")
        elif a.experiment == "all":
            run_experiments(list(EXPERIMENTS), opts, f".venv/bin/python tools/experiments.py all --budget {a.budget}")
            report(opts)
        elif a.experiment == "report":
            report(opts)
        else:
            run_experiments([a.experiment], opts)
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from quadexport.cli.argtypes import BUDGETS

    p.add_argument("experiment", choices=COMMANDS,
                   help="one experiment, all of them (then report), report; or a study (compression, quadratize: "
                   "models/exp-<study>.toml, every step resumable, then its table, JSON and plots; lm: the "
                   "language-model study, models/exp-lm.toml, writes docs/lm.md)")
    p.add_argument("--budget", choices=BUDGETS, default="small",
                   help="small: the documented results; tiny: seconds, for tests")
    p.add_argument("--out", default=None, help="results folder (default reports/experiments/<budget>)")
    p.add_argument("--docs", default=None,
                   help="where report writes results.md and img/ (default docs/ for small, <out>/docs for tiny)")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.set_defaults(func=run)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiments", help="reproduce the paper's claims (trainability, accuracy, expressivity, "
                       "warm start) and the compression / quadratize studies from the models/exp-*.toml recipes")
    _add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    """``tools/experiments.py``: the same command without the ``quadexport`` prefix."""
    p = argparse.ArgumentParser(prog="tools/experiments.py",
                                description="Reproduce the paper's claims (issue #6): trainability (ReLinear), "
                                "accuracy, expressivity, warm start.")
    _add_arguments(p)
    a = p.parse_args(argv)
    from quadexport.errors import QuadexportError

    try:
        return a.func(a)
    except QuadexportError as e:  # a user mistake: one line, exit 2 (as the quadexport CLI does)
        print(f"tools/experiments.py: error: {e}", file=sys.stderr)
        return 2
