"""The quadratize study of ``docs/quadratize.md`` (``quadexport experiments quadratize``): a trained ReLU network made
quadratic and fine-tuned, against ReLU controls, paired by seed.

Recipe ``models/exp-quadratize.toml``: ``[train]`` (fields every run shares), ``[run] seeds``, ``[configs.<name>]``
(one run per config and seed; ``warm_start`` names another config, whose run of the same seed it starts from),
``[quadratize]`` (which configs, the paired controls, step-time settings) and ``[bench]`` (which configs' runs are
timed). Steps, each resumable:

- :func:`train_runs`: every config × seed (:mod:`~quadexport.experiments.runner`: records reused when the config is
  unchanged), warm starts after their source; run dirs ``<out>/rundirs/quadratize/<config>-s<seed>``;
- :func:`bench_runs`: one interleaved :func:`quadexport.bench.bench` of the ``[bench]`` runs
  (``<out>/quadratize/bench``), reused when the same checkpoints were timed with the same settings;
- :func:`steptime`: median SGD-step time of every (neuron, trainable parts), interleaved
  (``<out>/quadratize/steptime.json``).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quadexport.experiments.compression import read_json, stamp, write_json
from quadexport.experiments.recipes import load_experiment_recipe
from quadexport.experiments.runner import Task, cost, run_tasks, train_task

log = logging.getLogger(__name__)


@dataclass
class QuadratizeStudy:
    """The recipe of the study and where its files go (module docstring)."""
    recipe: dict[str, Any]
    out: Path
    jobs: int = 2
    threads: int = 1

    @classmethod
    def load(cls, budget: str, out: Path, jobs: int = 2, threads: int = 1) -> "QuadratizeStudy":
        return cls(load_experiment_recipe("quadratize", budget), Path(out), jobs, threads)

    @property
    def root(self) -> Path:
        return self.out / "quadratize"

    @property
    def settings(self) -> dict[str, Any]:
        return self.recipe.get("quadratize", {})

    def run_dir(self, config: str, seed: int) -> Path:
        return self.out / "rundirs" / "quadratize" / f"{config}-s{seed}"

    def configs(self) -> dict[str, dict[str, Any]]:
        """The selected ``[configs.*]`` (``quadratize.configs``; empty: all), with their warm-start sources."""
        allc, chosen = self.recipe["configs"], self.settings.get("configs") or []
        names = [c for c in allc if not chosen or c in chosen]
        for c in list(names):
            src = allc[c].get("warm_start")
            if src is not None and src not in allc:
                from quadexport.errors import UsageError

                raise UsageError(f"[configs.{c}] warm_start = {src!r} is not a config of the recipe")
            if src is not None and src not in names:
                names.append(src)
        return {c: allc[c] for c in allc if c in names}

    def neuron(self, config: str) -> str:
        return self.recipe["configs"][config].get("neuron", self.recipe["train"].get("neuron", "fan"))

    def parts(self, config: str) -> str:
        return self.recipe["configs"][config].get("train_only", "all")


def _depth(configs: dict[str, dict[str, Any]], c: str) -> int:
    src = configs[c].get("warm_start")
    return 0 if src is None else 1 + _depth(configs, src)


def _task(study: QuadratizeStudy, name: str, seed: int) -> Task:
    """The training task of ``name`` for ``seed`` (its run dir is :meth:`QuadratizeStudy.run_dir`)."""
    spec = dict(study.recipe["configs"][name])
    src = spec.pop("warm_start", None)
    cfg = dict(study.recipe["train"], **spec, seed=seed)
    if src is not None:
        cfg["warm_start"] = str(study.run_dir(src, seed))
    c = cost(cfg["model"], cfg["neuron"], cfg.get("train_subset") or 60000, cfg.get("test_subset") or 10000,
             cfg["epochs"])
    return train_task("quadratize", f"{name}-s{seed}", study.out, cfg, {"config": name, "seed": seed}, c)


def train_runs(study: QuadratizeStudy) -> dict[str, dict[str, Any]]:
    """Train every selected config for every seed, one phase per warm-start depth; ``{"<config>-s<seed>": record}``."""
    configs = study.configs()
    records: dict[str, dict[str, Any]] = {}
    for depth in range(max(_depth(configs, c) for c in configs) + 1):
        tasks = [_task(study, c, s) for c in configs if _depth(configs, c) == depth for s in study.recipe["run"]["seeds"]]
        records.update(run_tasks(tasks, study.jobs, study.threads))
    bad = [k for k, r in records.items() if r["status"] != "ok"]
    if bad:
        log.warning("  runs that did not finish (left out): %s", ", ".join(bad))
    return records


def bench_runs(study: QuadratizeStudy, records: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """One interleaved ``quadexport bench`` of the ``[bench] configs`` runs of ``[bench] seed``; the saved report's
    dict (``bench.json``), reused when the same checkpoints were timed with the same settings."""
    cfg = dict(study.recipe.get("bench", {}))
    seed = int(cfg.pop("seed", 0))
    runs = [study.run_dir(c, seed) for c in cfg.pop("configs", []) if c in study.configs()]
    runs = [r for r in runs if (r / "checkpoint.pt").exists()]
    if not runs:
        return None
    out = study.root / "bench"
    params = {"runs": [[str(r), stamp(r / "checkpoint.pt")] for r in runs], **cfg}
    if read_json(out / "study_bench.json") == params and (done := read_json(out / "bench.json")) is not None:
        log.info("  bench: done")
        return done
    from quadexport.bench import bench

    log.info("  bench: %d runs interleaved", len(runs))
    bench([str(r) for r in runs], baselines=False, torch_eager=False, batches=cfg.get("batches", [1, 64]),
          threads=int(cfg.get("threads", study.threads)), min_seconds=float(cfg.get("min_seconds", 1.0)), out=out)
    write_json(out / "study_bench.json", params)
    return read_json(out / "bench.json")


def median_step_ms(nets: dict, opts: dict, x: Any, y: Any, steps: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of one SGD step per model, the models interleaved step by step so machine noise hits all
    of them alike."""
    import torch.nn.functional as F

    times: dict[str, list[float]] = {n: [] for n in nets}
    for i in range(warmup + steps):
        for n, m in nets.items():
            t = time.perf_counter()
            opts[n].zero_grad()
            F.cross_entropy(m(x), y).backward()
            opts[n].step()
            if i >= warmup:
                times[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) * 1000 for n, v in times.items()}


def _step_nets(study: QuadratizeStudy, combos: list[tuple[str, str]], shape: tuple[int, ...]) -> tuple[dict, dict]:
    import torch

    import quadexport as q
    from quadexport.training.adapter import set_trainable

    nets, opts = {}, {}
    for neuron, parts in combos:
        torch.manual_seed(0)
        m = q.create_model(study.recipe["train"]["model"], neuron, in_channels=shape[0], input_size=tuple(shape[1:]))
        set_trainable(m, parts)  # what --train-only PARTS trains
        nets[(neuron, parts)] = m
        opts[(neuron, parts)] = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    return nets, opts


def steptime(study: QuadratizeStudy) -> dict[str, dict[str, float]]:
    """``{config: {"ms", "ratio"}}``: median train-step time of each config's (neuron, trainable parts), all of them
    interleaved; ratio to the ReLU model trained fully. Reused when measured with the same settings."""
    import torch

    from quadexport.data import load_dataset

    s, configs = study.settings, study.configs()
    combos = sorted({(study.neuron(c), study.parts(c)) for c in configs})
    ds = load_dataset(study.recipe["train"]["dataset"], train_subset=10, test_subset=1)
    shape = tuple(ds.input_shape)
    params = {"combos": [list(c) for c in combos], "steps": s.get("steptime_steps", 12),
              "warmup": s.get("steptime_warmup", 2), "batch": s.get("steptime_batch", 128), "shape": list(shape),
              "threads": study.threads, "model": study.recipe["train"]["model"]}
    path = study.root / "steptime.json"
    if (done := read_json(path)) is not None and done.get("params") == params:
        log.info("  step time: done")
        return done["configs"]
    torch.set_num_threads(study.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(params["batch"], *shape, generator=g)
    y = torch.randint(0, ds.num_classes, (params["batch"],), generator=g)
    nets, opts = _step_nets(study, combos, shape)
    log.info("  step time: %d models interleaved, %d steps of batch %d", len(nets), params["steps"], params["batch"])
    med = median_step_ms(nets, opts, x, y, params["steps"], params["warmup"])
    ref = med.get(("relu", "all"))
    res = {c: {"ms": med[(study.neuron(c), study.parts(c))],
               "ratio": med[(study.neuron(c), study.parts(c))] / ref if ref else None} for c in configs}
    write_json(path, {"params": params, "configs": res})
    return res


__all__ = ["QuadratizeStudy", "bench_runs", "median_step_ms", "steptime", "train_runs"]
