"""Run the experiments of issue #6 end to end: tasks → process pool → aggregated ``<exp>.json`` → report.

Raw results go to ``<out>/`` (default ``reports/experiments/<budget>/``, git-ignored): one JSON per training run
under ``runs/<exp>/`` (reused when its config is unchanged, so an interrupted command resumes), the run dirs under
``rundirs/<exp>/``, and one aggregated ``<exp>.json`` per experiment (an :class:`Envelope`). :func:`report` reads
only the aggregated files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quadexport.experiments.accuracy import accuracy_tasks, aggregate_accuracy
from quadexport.experiments.expressivity import EXPRESSIVITY, aggregate_expressivity
from quadexport.experiments.recipes import EXPERIMENTS, ROOT, SCHEMA_VERSION, check_budget, load_experiment_recipe
from quadexport.experiments.runner import Task, run_tasks
from quadexport.experiments.trainability import aggregate_trainability, rescuable, trainability_tasks
from quadexport.experiments.warmstart import aggregate_warmstart, warmstart_tasks

log = logging.getLogger(__name__)


@dataclass
class ExperimentOptions:
    """How to run the experiments.

    Attributes:
        budget: ``small`` (the documented results) or ``tiny`` (seconds, for tests).
        out: results folder (None: ``reports/experiments/<budget>``).
        docs: where the report writes ``results.md`` and ``img/`` (None: ``docs/`` for small, ``<out>/docs`` else).
        jobs: training runs in parallel (processes).
        threads: torch threads per run.
    """
    budget: str = "small"
    out: str | None = None
    docs: str | None = None
    jobs: int = 2
    threads: int = 1

    def __post_init__(self) -> None:
        check_budget(self.budget)
        if self.out is None:
            self.out = str(ROOT / "reports" / "experiments" / self.budget)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


@dataclass
class Envelope:
    """One aggregated experiment file (``<out>/<exp>.json``): the recipe, the run records and their summary."""
    exp: str
    budget: str
    recipe: dict[str, Any] | None
    command: str
    summary: dict[str, Any]
    runs: list[dict[str, Any]]
    wall_s: float
    raw: dict[str, Any] | None = None  # expressivity only: the single result record the plots read
    finished: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    def to_dict(self) -> dict[str, Any]:
        d = {"schema": SCHEMA_VERSION, **dataclasses.asdict(self), "n_runs": len(self.runs),
             "cpu_s": sum(r.get("cpu_s", 0.0) for r in self.runs),
             "run_wall_s": sum(r.get("wall_s", 0.0) for r in self.runs),
             "torch_threads_per_run": 1, "cpu_count": os.cpu_count()}
        if self.raw is None:
            del d["raw"]
        return d


def result_paths(out: Path) -> dict[str, Path]:
    """The aggregated result file of each experiment."""
    return {e: out / f"{e}.json" for e in EXPERIMENTS}


def _write(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _cmd(exp: str, budget: str) -> str:
    return f".venv/bin/python tools/experiments.py {exp} --budget {budget}"


def _expressivity_task(budget: str, out: Path) -> Task:
    # long single-process job with no dependencies: schedule it first so it overlaps the training runs
    return Task("expressivity", "expressivity", "expressivity",
                str(out / "runs" / "expressivity" / "expressivity.json"), cost=float("inf"), budget=budget,
                params=EXPRESSIVITY[budget])


def _rescue(tr: dict[str, Any], res: dict[str, dict[str, Any]], out: Path) -> list[Task]:
    """Rescue reruns (with NaN rollbacks) of the collapsed key-cell runs of the trainability results ``res``."""
    if not tr["grid"].get("rescue_rollbacks", 0):
        return []
    key_cells = {tuple(c) for c in tr["grid"]["key_cells"]}
    collapsed = [k for k, r in res.items() if r.get("exp") == "trainability" and rescuable(r, key_cells)]
    if collapsed:
        log.info("  rescue: %d collapsed key-cell run(s) rerun with max_rollbacks=%d", len(collapsed),
                 tr["grid"]["rescue_rollbacks"])
    return [t for t in trainability_tasks(tr, out, collapsed) if t.labels.get("rescue")]


def _envelopes(which: list[str], opts: ExperimentOptions, res: dict[str, dict[str, Any]], wall: float, cmd: str,
               recipes: dict[str, dict[str, Any]]) -> dict[str, Envelope]:
    """Aggregate the run records ``res`` into the envelopes of the experiments ``which``."""
    own = lambda e: [r for r in res.values() if r.get("exp") == e]  # noqa: E731
    envs = {}
    if "trainability" in which:
        tr = recipes["trainability"]
        envs["trainability"] = Envelope("trainability", opts.budget, tr, cmd, aggregate_trainability(tr, res),
                                        own("trainability"), wall)
    ac = recipes.get("accuracy")
    if "accuracy" in which:
        envs["accuracy"] = Envelope("accuracy", opts.budget, ac, cmd, aggregate_accuracy(ac, res), own("accuracy"),
                                    wall)
    if "warmstart" in which:
        envs["warmstart"] = Envelope("warmstart", opts.budget, ac, cmd, aggregate_warmstart(ac, res),
                                     own("warmstart"), wall)
    if "expressivity" in which:
        raw = res["expressivity"]
        envs["expressivity"] = Envelope("expressivity", opts.budget, {"params": EXPRESSIVITY[opts.budget]}, cmd,
                                        aggregate_expressivity(raw), [raw], wall, raw=raw)
    return envs


def run_experiments(which: list[str], opts: ExperimentOptions, command: str | None = None) -> dict[str, Envelope]:
    """Run the experiments ``which`` with one shared process pool and write their ``<exp>.json``.

    Phase 1: every independent run, longest first; phase 2: the runs that depend on phase 1 (warm starts from
    the trained twins, rescues of collapsed trainability runs).
    """
    unknown = [e for e in which if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; known: {EXPERIMENTS}")
    out, t0 = opts.out_dir, time.perf_counter()
    log.info("== %s (%s) -> %s", ", ".join(which), opts.budget, out)
    recipes = {}
    if "trainability" in which:
        recipes["trainability"] = load_experiment_recipe("trainability", opts.budget)
    if {"accuracy", "warmstart"} & set(which):
        recipes["accuracy"] = load_experiment_recipe("accuracy", opts.budget)
    tr, ac = recipes.get("trainability"), recipes.get("accuracy")
    phase1: list[Task] = (trainability_tasks(tr, out) if tr else []) + (accuracy_tasks(ac, out) if
                                                                        "accuracy" in which else [])
    phase1 += warmstart_tasks(ac, out, 1) if "warmstart" in which else []
    phase1 += [_expressivity_task(opts.budget, out)] if "expressivity" in which else []
    res = run_tasks(phase1, opts.jobs, opts.threads)
    phase2 = (warmstart_tasks(ac, out, 2) if "warmstart" in which else []) + (_rescue(tr, res, out) if tr else [])
    res.update(run_tasks(phase2, opts.jobs, opts.threads))
    wall = time.perf_counter() - t0
    log.info("== done in %.1f min wall", wall / 60)
    envs = _envelopes(which, opts, res, wall, command or _cmd(which[0], opts.budget), recipes)
    paths = result_paths(out)
    for e, env in envs.items():
        _write(paths[e], env.to_dict())
    return envs


def reaggregate(out: Path) -> None:
    """Recompute every ``<exp>.json`` summary from the run records it holds (and the recipe stored with it), so
    the report always reflects the current aggregation code without retraining; wall/CPU totals are kept."""
    p = result_paths(out)
    envs = {e: json.loads(p[e].read_text()) for e in EXPERIMENTS if p[e].exists()}
    acc_runs = {r["key"]: r for r in envs.get("accuracy", {}).get("runs", [])}
    for e, env in envs.items():
        runs = {r["key"]: r for r in env["runs"]}
        if e == "trainability":
            env["summary"] = aggregate_trainability(env["recipe"], runs)
        elif e == "accuracy":
            env["summary"] = aggregate_accuracy(env["recipe"], runs)
        elif e == "warmstart":
            env["summary"] = aggregate_warmstart(env["recipe"], {**acc_runs, **runs})
        elif e == "expressivity":
            env["summary"] = aggregate_expressivity(env["raw"])
        _write(p[e], env)


def report(opts: ExperimentOptions) -> Path:
    """Re-aggregate the results in ``opts.out`` and render ``results.md`` + ``img/``; returns the markdown path."""
    from quadexport.experiments.report import render

    reaggregate(opts.out_dir)
    docs = Path(opts.docs) if opts.docs else (ROOT / "docs" if opts.budget == "small" else opts.out_dir / "docs")
    path = render(opts.out_dir, docs)
    log.info("== report: %s", path)
    return path
