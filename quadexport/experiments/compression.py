"""The compression study of issue #5 (``quadexport experiments compression``, ``docs/compression.md``): its layout,
the trained models, the ReLU control and the compressed variants.

Recipe ``models/exp-compression.toml``: ``[train]``/``[relinear]`` (the recipe of every trained model), ``[[models]]``
(label, model, neuron, role, optional seed), ``[compression]`` (source and twin labels, control epochs, which
variants), ``[variants.<name>]`` (:func:`quadexport.compress.compress` options), ``[sweep]``, ``[latsweep]``,
``[bench]``. Every step is resumable: a training run is reused when its record has the same config
(:mod:`~quadexport.experiments.runner`), a control, variant or sweep when the options and the source checkpoint it
was made from are unchanged. Files under ``<out>`` (default ``reports/experiments/<budget>``)::

    runs/compression/<label>.json         training records      rundirs/compression/<label>   run dirs
    compression/compressed/<variant>/     compressed run dirs   compression/onnx/              exported models
    compression/sweep.json, latsweep-t<threads>.json, timing-run<i>.json                    measurements
    compression.json                      the aggregated study  (report: <docs>/compression/, <docs>/img/)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quadexport.experiments.recipes import load_experiment_recipe
from quadexport.experiments.runner import Task, cost, run_tasks, train_task

log = logging.getLogger(__name__)

VARIANT_DEFAULTS = {"finetune_epochs": 0, "cost": "macs", "max_drop": None}
"""Options every variant starts from: the study's variants were measured without fine-tuning, with the MAC cost and
without an accuracy budget (the defaults of ``quadexport compress`` at the time)."""


@dataclass
class CompressionStudy:
    """The recipe of the study and where its files go (see the module docstring).

    Attributes:
        recipe: ``models/exp-compression.toml`` with the budget applied.
        out: the results folder.
        jobs: training runs in parallel.
        threads: torch / onnxruntime threads of every run and timing.
    """
    recipe: dict[str, Any]
    out: Path
    jobs: int = 2
    threads: int = 1

    @classmethod
    def load(cls, budget: str, out: Path, jobs: int = 2, threads: int = 1) -> "CompressionStudy":
        return cls(load_experiment_recipe("compression", budget), Path(out), jobs, threads)

    @property
    def root(self) -> Path:
        return self.out / "compression"

    @property
    def settings(self) -> dict[str, Any]:
        return self.recipe["compression"]

    def run_dir(self, label: str) -> Path:
        return self.out / "rundirs" / "compression" / label

    def variant_dir(self, name: str) -> Path:
        return self.root / "compressed" / name

    @property
    def control_label(self) -> str | None:
        n = int(self.settings.get("control_epochs", 0))
        return f"{self.settings['twin']}-ft{n}" if n else None

    def models(self) -> list[dict[str, Any]]:
        return list(self.recipe["models"])

    def variants(self) -> dict[str, dict[str, Any]]:
        """The selected ``[variants.*]`` (``compression.variants``; empty: all) and the variants they start from, in
        recipe order."""
        from quadexport.errors import UsageError

        allv = self.recipe.get("variants", {})
        names = list(self.settings.get("variants") or allv)
        for name in names:  # grows while sources are added
            if name not in allv:
                raise UsageError(f"unknown variant {name!r} (compression.variants or a source); known: "
                                 f"{', '.join(allv)}")
            src = allv[name].get("source")
            if src is not None and src not in names:
                names.append(src)
        return {k: v for k, v in allv.items() if k in names}


def stamp(path: Path) -> list[int] | None:
    """Identity of a file version (mtime ns, size), to tell whether what was made from it is stale."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_mtime_ns, st.st_size]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (NaN allowed: a diverged run's record holds NaN losses)."""
    from quadexport.runs.atomicfile import atomic_write

    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def model_config(recipe: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields of ``[[models]]`` entry ``m`` (ReLU models never use ReLinear)."""
    from quadexport.pipeline import deep_merge

    rl = {"mode": "none"} if m["neuron"] == "relu" else deep_merge(recipe.get("relinear", {}), m.get("relinear", {}))
    cfg = dict(recipe["train"], model=m["model"], neuron=m["neuron"], relinear=rl)
    if "seed" in m:
        cfg["seed"] = m["seed"]
    return cfg


def train_models(study: CompressionStudy) -> dict[str, dict[str, Any]]:
    """Train every ``[[models]]`` entry (finished runs with the same config are reused); ``{label: record}``."""
    tasks: list[Task] = []
    for m in study.models():
        cfg = model_config(study.recipe, m)
        c = cost(m["model"], m["neuron"], cfg.get("train_subset") or 60000, cfg.get("test_subset") or 10000,
                 cfg["epochs"])
        tasks.append(train_task("compression", m["label"], study.out, cfg, {"label": m["label"], "role": m["role"]},
                                c))
    records = run_tasks(tasks, study.jobs, study.threads)
    for label, r in records.items():
        if r["status"] != "ok":
            log.warning("  %s: training %s (%s); left out of the study", label, r["status"], r["error"])
    return records


def control(study: CompressionStudy) -> Path | None:
    """The ReLU twin fine-tuned ``control_epochs`` more epochs with the schedule the fine-tuned variants use (run's
    LR × 0.1, cosine): "pruned + fine-tuned" against "ReLU + the same extra epochs". Reused when done from the same
    twin checkpoint."""
    label = study.control_label
    if label is None:
        return None
    src, out, epochs = study.run_dir(study.settings["twin"]), study.run_dir(label), int(study.settings["control_epochs"])
    made_from = {"source": str(src), "source_stamp": stamp(src / "checkpoint.pt"), "epochs": epochs}
    done = read_json(out / "metrics.json")
    if done is not None and done.get("made_from") == made_from and (out / "checkpoint.pt").exists():
        log.info("  control %s: done (%.2f%%)", label, 100 * done["test_acc"])
        return out
    from quadexport.compress.finetune import finetune
    from quadexport.compress.rundata import open_data
    from quadexport.runmeta import meta_dict
    from quadexport.runs.checkpoint import load
    from quadexport.runs.rundir import open_run
    from quadexport.runs.write import write_run

    model = load(src)
    meta = meta_dict(model)
    acc0 = float(meta.get("test_acc") or 0.0)
    data = open_data(src, meta, 1, val_samples=0)
    hist = finetune(model, data.fit, meta["train_config"], epochs, workers=data.workers)
    acc = data.accuracy(model, "test")
    meta.update(test_acc=acc, finetuned_from=str(src), finetune=hist)
    config = {k: v for k, v in (read_json(src / "config.json") or {}).items() if k != "run_id"}
    config.update(finetuned_from=str(src), finetune_epochs=epochs)
    metrics = {"test_acc": acc, "finetune": hist, "made_from": made_from, "epochs": []}
    with open_run(out, "overwrite", resumable=False) as run:  # a fresh run id on all three files
        write_run(run, model, meta, config=config, metrics=metrics, epoch=int(meta["train_config"]["epochs"]) + epochs)
    log.info("  control %s: %.2f%% -> %.2f%% after %d fine-tuning epoch(s)", label, 100 * acc0, 100 * acc,
             epochs)
    return out


def _variant_source(study: CompressionStudy, opts: dict[str, Any]) -> Path:
    name = opts.pop("source", None)
    return study.variant_dir(name) if name else study.run_dir(study.settings["source"])


def compress_variants(study: CompressionStudy) -> dict[str, Path]:
    """Compress the source model into every selected variant (in recipe order: a variant may start from an earlier
    one); a variant made with the same options from the same source checkpoint is reused. ``{name: run dir}``."""
    import torch

    from quadexport.compress import compress

    torch.set_num_threads(study.threads)
    twin = study.run_dir(study.settings["twin"])
    out: dict[str, Path] = {}
    for name, variant in study.variants().items():
        opts = dict(variant)
        src = _variant_source(study, opts)
        opts = {**VARIANT_DEFAULTS, **opts}
        dst = study.variant_dir(name)
        made_from = {"source": str(src), "source_stamp": stamp(src / "checkpoint.pt"), "options": opts}
        if read_json(dst / "study_variant.json") == made_from and (dst / "compress_report.json").exists():
            log.info("  variant %s: done", name)
        else:
            log.info("  variant %s: compress %s", name, opts)
            compress(src, dst, bench=False, overwrite=True, progress=False, verbose=False,
                     twin=twin if (twin / "checkpoint.pt").exists() else None, **opts)
            write_json(dst / "study_variant.json", made_from)
        out[name] = dst
    return out


__all__ = ["CompressionStudy", "VARIANT_DEFAULTS", "compress_variants", "control", "model_config", "read_json",
           "stamp", "train_models", "write_json"]
