"""End-to-end pipeline driven by a TOML recipe: train (quadratic + ReLU twin) → export → check → bench → report.

A recipe (``models/*.toml``)::

    name = "digits-demo"
    [model]      name = "cnn", neuron = "fan", width = 16
    [relinear]   mode = "sg", lr_ratio_g = 0.01, lr_ratio_b = 0.01      (any ReLinearConfig field)
    [data]       dataset = "digits", train_subset = 5000               (optional data_dir, test_subset)
    [train]      epochs = 15, batch_size = 64, lr = 0.05, seed = 0     (any TrainConfig field)
    [baselines]  twin = true, mac_matched = "resnet56"                 (ReLU models trained with the same recipe)
    [export]     mode = "decomposed", opset = 20
    [check]      rtol = 1e-5
    [bench]      batches = [1, 64], threads = 2, min_seconds = 1.0

The same format describes the experiments of :mod:`quadexport.experiments`: a recipe with a top-level
``experiments = [...]`` list uses the experiment sections (``[run]``, ``[[datasets]]``, ``[[models]]``,
``[warmstart]``, ``[grid]``, ``[regularisers.<name>]``) instead of ``[model]``/``[data]``/... Any recipe may hold
``[budget.<name>]`` tables that override its sections (``load_recipe(path, budget="tiny")``). :func:`load_recipe`
checks every key, so a typo is a :class:`~quadexport.errors.UsageError` naming the key and the nearest valid one.

Everything lands in one report folder (default ``reports/<name>``): ``runs/<model>-<neuron>`` run dirs,
``<model>-<neuron>.onnx``, ``parity.json``, ``bench/`` (bench.json, bench.md, PNGs) and ``summary.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quadexport.runs.atomicfile import write_json
from quadexport.errors import UsageError, did_you_mean
from quadexport.training.relinear import ReLinearConfig
from quadexport.training.loop import TrainConfig

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------- recipe format


@dataclass(frozen=True)
class _Array:
    """Schema of an array of tables (``[[datasets]]``): every item has the keys of ``item``."""
    item: dict[str, Any]


@dataclass(frozen=True)
class _MapOf:
    """Schema of a table of named tables (``[regularisers.<name>]``): every value has the keys of ``item``."""
    item: dict[str, Any]


def _leaves(*names: str) -> dict[str, Any]:
    return dict.fromkeys(names)


_RELINEAR = _leaves(*(f.name for f in dataclasses.fields(ReLinearConfig)))
_DATA = _leaves("dataset", "data_dir", "train_subset", "test_subset")
_TRAIN_ALL = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("out", "relinear")]
# pipeline [train]: the model and its data come from [model] and [data]
_PIPELINE_TRAIN = _leaves(*(n for n in _TRAIN_ALL if n not in ("model", "neuron", "width", *_DATA)))

PIPELINE_SECTIONS: dict[str, Any] = {
    "model": _leaves("name", "neuron", "width"), "relinear": _RELINEAR, "data": _DATA, "train": _PIPELINE_TRAIN,
    "baselines": _leaves("twin", "mac_matched"), "export": _leaves("mode", "opset"), "check": _leaves("rtol"),
    "bench": _leaves("batches", "threads", "min_seconds"),
}
EXPERIMENT_SECTIONS: dict[str, Any] = {
    "relinear": _RELINEAR, "train": _leaves(*_TRAIN_ALL), "run": _leaves("seeds", "labels"),
    "datasets": _Array({**_DATA, "groups": None}),
    "models": _Array({**_leaves("group", "label", "model", "neuron", "role", "seed"), "relinear": _RELINEAR}),
    "warmstart": _leaves("dataset", "model", "neuron", "twin_epochs_factor", "seeds"),
    "grid": _leaves("lrs", "inits", "regularisers", "seeds", "key_seeds", "key_cells", "only_key", "collapse_acc",
                    "blowup_test_loss", "rescue_rollbacks"),
    "regularisers": _MapOf({**_RELINEAR, "label": None, "alias": None}),
    "lm": _leaves("equal_time", "timing_steps", "timing_rounds", "latency_batches", "latency_seconds"),
    # the studies (quadexport.experiments.compression / .quadratize_study)
    "compression": _leaves("source", "twin", "control_epochs", "variants"),
    "variants": _MapOf(_leaves("source", "threshold", "target_ratio", "cost", "finetune_epochs", "bn_recalibrate",
                               "shortcut", "quantize", "keep_fp32", "calib_samples", "val_samples", "align", "split",
                               "drop_branches", "select")),
    "sweep": _leaves("thresholds", "aligns", "calib_samples"),
    "latsweep": _leaves("thresholds", "aligns", "shortcuts", "splits", "calib_samples", "min_seconds"),
    "bench": _leaves("batches", "threads", "min_seconds", "repeats", "seed", "configs"),
    "quadratize": _leaves("configs", "controls", "time_control", "steptime_steps", "steptime_warmup",
                          "steptime_batch"),
    "configs": _MapOf({**_leaves(*_TRAIN_ALL), "relinear": _RELINEAR}),
}
TOP_KEYS = ("name", "description", "experiments", "budget")
SECTIONS = set(TOP_KEYS) | set(PIPELINE_SECTIONS)  # the sections of a pipeline recipe


def _check(table: Any, schema: dict[str, Any], where: str, path: Path) -> None:
    """Raise :class:`UsageError` for the first key of ``table`` (recursively) that ``schema`` does not know.

    ``where`` is the dotted name of ``table`` in the recipe (``""`` for the top level), used in the message.
    """
    shown = f"[{where}]" if where else "the top level"
    if not isinstance(table, dict):
        raise UsageError(f"recipe {path}: {shown} must be a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in schema:
            raise UsageError(f"recipe {path}: unknown key {key!r} in {shown}{did_you_mean(key, schema)} "
                             f"(known: {', '.join(sorted(schema))})")
        sub, here = schema[key], f"{where}.{key}" if where else key
        if isinstance(sub, dict):
            _check(value, sub, here, path)
        elif isinstance(sub, _Array):
            if not isinstance(value, list):
                raise UsageError(f"recipe {path}: [{here}] must be an array of tables ([[{key}]])")
            for i, item in enumerate(value):
                _check(item, sub.item, f"{here} #{i + 1}", path)
        elif isinstance(sub, _MapOf):
            _check(value, dict.fromkeys(value), here, path)
            for name, item in value.items():
                _check(item, sub.item, f"{here}.{name}", path)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``over``: tables merge recursively, anything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_recipe(path: str | Path, budget: str | None = None) -> dict[str, Any]:
    """Read and validate a recipe TOML file (pipeline or experiment recipe).

    Args:
        path: recipe file.
        budget: apply the ``[budget.<budget>]`` overrides (None: the recipe as written).

    Raises:
        UsageError: unknown section or key (with the nearest valid one), unknown budget, missing ``[model]``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"recipe {path} is not valid TOML: {e}") from None
    sections = EXPERIMENT_SECTIONS if "experiments" in recipe else PIPELINE_SECTIONS
    schema = {**dict.fromkeys(TOP_KEYS), **sections}
    for key in recipe:
        if key not in schema:
            kind = "an experiment" if sections is EXPERIMENT_SECTIONS else "a pipeline"
            raise UsageError(f"recipe {path}: unknown section [{key}] for {kind} recipe{did_you_mean(key, schema)}"
                             f" (known: {', '.join(sorted(schema))})")
    body = {k: v for k, v in recipe.items() if k not in TOP_KEYS}
    _check(body, sections, "", path)
    overrides = recipe.pop("budget", {})
    _check(overrides, dict.fromkeys(overrides), "budget", path)
    for name, over in overrides.items():
        _check(over, sections, f"budget.{name}", path)
    if budget is not None:
        if budget not in overrides:
            raise UsageError(f"recipe {path} has no [budget.{budget}]{did_you_mean(budget, overrides)} "
                             f"(budgets: {', '.join(sorted(overrides)) or 'none'})")
        recipe = deep_merge(recipe, overrides[budget])
    if sections is PIPELINE_SECTIONS and "name" not in recipe.get("model", {}):
        raise UsageError(f"recipe {path} needs [model] name = ... (an experiment recipe declares "
                         "experiments = [...] and runs with tools/experiments.py)")
    recipe.setdefault("name", path.stem)
    return recipe


def train_config(recipe: dict[str, Any], model: str, neuron: str, out: Path) -> TrainConfig:
    """The :class:`~quadexport.training.loop.TrainConfig` of one model of the recipe."""
    rl = ReLinearConfig(**recipe.get("relinear", {}))
    if neuron == "relu":
        rl = ReLinearConfig(mode="none")
    m = recipe["model"]
    width = m.get("width") if model == m["name"] else None
    return TrainConfig(model=model, neuron=neuron, out=str(out), relinear=rl, width=width,
                       **recipe.get("data", {}), **recipe.get("train", {}))


def _models(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    m, base = recipe["model"], recipe.get("baselines", {})
    out = [(m["name"], m.get("neuron", "fan"))]
    if base.get("twin", True) and out[0][1] != "relu":
        out.append((m["name"], "relu"))
    if base.get("mac_matched"):
        out.append((base["mac_matched"], "relu"))
    return out


# ----------------------------------------------------------------------------------------------------- the run


@dataclass
class ModelResult:
    """One trained model of a pipeline run."""
    model: str
    neuron: str
    run_dir: str
    test_acc: float
    train_seconds: float


@dataclass
class PipelineSummary:
    """Result of :func:`run_pipeline` (``summary.json`` is :meth:`to_dict`).

    Attributes:
        recipe: the loaded recipe.
        report: report folder.
        models: the trained models, quadratic model first.
        stages: seconds per stage (``train_s``).
        parity_ok: the onnxruntime parity check of the quadratic model passed.
        onnx: the exported quadratic model.
        bench: ``bench.json`` (None when the bench was skipped).
        ratios: latency / MAC ratios of the bench (quadratic vs each baseline).
        total_s: wall seconds of the whole run.
    """
    recipe: dict[str, Any]
    report: str
    models: list[ModelResult] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    parity_ok: bool = False
    onnx: str | None = None
    bench: str | None = None
    ratios: list[dict[str, Any]] = field(default_factory=list)
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.bench is None:  # same keys as before the dataclass: no bench entries when it was skipped
            del d["bench"], d["ratios"]
        return d


def _train_one(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool) -> tuple[dict[str, Any], str]:
    """Train one model of the recipe into ``run_dir`` with the run-dir semantics of ``quadexport train``.

    An empty or missing ``run_dir`` starts a new run; ``overwrite`` replaces what is there. Otherwise (``resume``)
    a finished run with this config is reused and a partial one (killed during training) continues from its last
    checkpoint; a run made with other settings is refused. Returns the metrics and a note for the stage line.
    """
    from quadexport.runs.checkpoint import read_checkpoint
    from quadexport.runs.rundir import CHECKPOINT, RunDirError, holds_run
    from quadexport.training.loop import train

    if overwrite or not holds_run(run_dir):
        return train(cfg, overwrite=overwrite), ""
    if not resume:
        raise RunDirError(f"{run_dir} already holds a run; pass --overwrite to retrain it (or drop --no-resume)")
    if not (run_dir / CHECKPOINT).is_file():
        raise RunDirError(f"{run_dir} holds files but no {CHECKPOINT}; pass --overwrite to retrain it")
    ck = read_checkpoint(run_dir)
    saved, mine = ck["meta"].get("train_config") or {}, cfg.to_dict()
    diff = [k for k in mine if k not in ("epochs", "out") and saved.get(k) != mine[k]]
    if int(ck["epoch"]) > cfg.epochs:
        diff.append(f"epochs {ck['epoch']} > {cfg.epochs}")
    if diff:
        raise RunDirError(f"{run_dir} holds a run trained with other settings ({', '.join(diff)}); pass --overwrite "
                          "to retrain it")
    if int(ck["epoch"]) == cfg.epochs:
        return json.loads((run_dir / "metrics.json").read_text()), " [cached]"
    return train(cfg, resume=True), f" [resumed at epoch {int(ck['epoch']) + 1}]"


def _train_all(recipe: dict[str, Any], report: Path, resume: bool, overwrite: bool = False) -> list[ModelResult]:
    out = []
    for model, neuron in _models(recipe):
        run_dir = report / "runs" / f"{model}-{neuron}"
        cfg = train_config(recipe, model, neuron, run_dir)
        log.info("== train %s (%s) on %s", model, neuron, cfg.dataset)
        metrics, note = _train_one(cfg, run_dir, resume, overwrite)
        if note:
            log.info("   %s (%s):%s", model, neuron, note)
        out.append(ModelResult(model, neuron, str(run_dir), metrics["test_acc"],
                               sum(e["seconds"] for e in metrics["epochs"])))
    return out


def _export_and_check(recipe: dict[str, Any], report: Path, quad_run: Path, summary: PipelineSummary) -> None:
    from quadexport.check import check
    from quadexport.runs.checkpoint import load
    from quadexport.exporter import export

    exp, chk = recipe.get("export", {}), recipe.get("check", {})
    model = load(quad_run)
    onnx_path = report / f"{quad_run.name}.onnx"
    log.info("== export %s -> %s (%s)", quad_run.name, onnx_path, exp.get("mode", "decomposed"))
    export(model, onnx_path, mode=exp.get("mode", "decomposed"), opset=int(exp.get("opset", 20)))
    log.info("== check %s", onnx_path)
    rep = check(onnx_path, model, rtol=float(chk.get("rtol", 1e-5)), dataset=model.quadexport_meta.get("dataset"),
                data_dir=recipe.get("data", {}).get("data_dir"))
    write_json(report / "parity.json", rep.to_dict())
    summary.parity_ok = bool(rep.ok)
    summary.onnx = str(onnx_path)


def _bench(recipe: dict[str, Any], report: Path, summary: PipelineSummary) -> None:
    from quadexport.bench import bench

    b, mode = recipe.get("bench", {}), recipe.get("export", {}).get("mode", "decomposed")
    batches, min_s = tuple(b.get("batches", (1, 64))), float(b.get("min_seconds", 1.0))
    # at least min_seconds per model and batch, plus warm-up and exports: say so before the long quiet part
    log.info("== bench %d models x batches %s (%s, >= %.0f s each: about %.0f s)", len(summary.models),
             "/".join(map(str, batches)), mode, min_s, len(summary.models) * len(batches) * min_s * 1.5)
    br = bench([m.run_dir for m in summary.models], mode=mode, batches=batches,
               threads=b.get("threads"), min_seconds=min_s, out=report / "bench",
               baselines=False)
    summary.bench = str(report / "bench" / "bench.json")
    summary.ratios = br.to_dict().get("ratios", [])


def run_pipeline(recipe_path: str | Path, out: str | Path | None = None, resume: bool = True,
                 skip_bench: bool = False, overwrite: bool = False) -> PipelineSummary:
    """Run a recipe end to end and write the report folder.

    Args:
        recipe_path: the TOML recipe.
        out: report folder (default ``reports/<recipe name>``).
        resume: reuse finished run dirs (a run whose checkpoint has all epochs is not retrained) and continue
            partial ones (a training that was killed resumes from its last checkpoint); False refuses a run dir
            that already holds a run. A run dir trained with other settings is refused either way.
        skip_bench: stop after check (used by tests).
        overwrite: retrain every model, replacing its run dir (the old run stays until the new first checkpoint).

    Returns:
        The summary (also written as ``summary.json`` and ``summary.md``).
    """
    recipe = load_recipe(recipe_path)
    if "experiments" in recipe:
        raise UsageError(f"recipe {recipe_path} is an experiment recipe (experiments = {recipe['experiments']}): "
                         "run it with tools/experiments.py, not the pipeline")
    report = Path(out or Path("reports") / recipe["name"])
    report.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary = PipelineSummary(recipe=recipe, report=str(report))
    summary.models = _train_all(recipe, report, resume, overwrite)
    summary.stages["train_s"] = time.perf_counter() - t_start
    _export_and_check(recipe, report, Path(summary.models[0].run_dir), summary)
    if not skip_bench:
        _bench(recipe, report, summary)
    summary.total_s = time.perf_counter() - t_start
    write_json(report / "summary.json", summary.to_dict())
    (report / "summary.md").write_text(render_summary(summary))
    return summary


def render_summary(summary: PipelineSummary) -> str:
    """Markdown summary of a pipeline run."""
    r = summary.recipe
    lines = [f"# {r['name']}", "", r.get("description", ""), "", "| model | neuron | test acc | train s |",
             "|---|---|---|---|"]
    for m in summary.models:
        lines.append(f"| {m.model} | {m.neuron} | {100 * m.test_acc:.2f}% | {m.train_seconds:.1f} |")
    lines += ["", f"ONNX: `{summary.onnx}` — parity {'passed' if summary.parity_ok else 'FAILED'} "
              f"(details in parity.json)", ""]
    if summary.ratios:
        lines += ["| quadratic | baseline | runtime | batch | latency ratio | MAC ratio |", "|---|---|---|---|---|---|"]
        for x in summary.ratios:
            lines.append(f"| {x['quadratic']} | {x['baseline']} | {x.get('mode', '')} | {x['batch']} | "
                         f"{x['latency_ratio']:.2f} | {x['mac_ratio']:.2f} |")
    lines += ["", f"Total time {summary.total_s:.0f} s."]
    return "\n".join(lines) + "\n"
