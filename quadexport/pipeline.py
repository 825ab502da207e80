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

Everything lands in one report folder (default ``reports/<name>``): ``runs/<model>-<neuron>`` run dirs,
``<model>-<neuron>.onnx``, ``parity.json``, ``bench/`` (bench.json, bench.md, PNGs) and ``summary.md``.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

from quadexport.checkpoint import write_json

SECTIONS = {"name", "description", "model", "relinear", "data", "train", "baselines", "export", "check", "bench"}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read and validate a recipe TOML file.

    Args:
        path: recipe file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"recipe {path} is not valid TOML: {e}") from None
    unknown = set(recipe) - SECTIONS
    if unknown:
        raise ValueError(f"recipe {path}: unknown sections {sorted(unknown)}; known: {sorted(SECTIONS)}")
    if "model" not in recipe or "name" not in recipe["model"]:
        raise ValueError(f"recipe {path} needs [model] name = ...")
    recipe.setdefault("name", path.stem)
    return recipe


def train_config(recipe: dict[str, Any], model: str, neuron: str, out: Path):
    """The :class:`~quadexport.train.TrainConfig` of one model of the recipe."""
    from quadexport.relinear import ReLinearConfig
    from quadexport.train import TrainConfig

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


def run_pipeline(recipe_path: str | Path, out: str | Path | None = None, resume: bool = True,
                 skip_bench: bool = False) -> dict[str, Any]:
    """Run a recipe end to end and write the report folder.

    Args:
        recipe_path: the TOML recipe.
        out: report folder (default ``reports/<recipe name>``).
        resume: reuse finished run dirs (a run whose checkpoint has all epochs is not retrained).
        skip_bench: stop after check (used by tests).

    Returns:
        The summary dict (also written as ``summary.json``).
    """
    from quadexport.checkpoint import load, read_checkpoint
    from quadexport.train import train

    recipe = load_recipe(recipe_path)
    report = Path(out or Path("reports") / recipe["name"])
    report.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary: dict[str, Any] = {"recipe": recipe, "report": str(report), "models": [], "stages": {}}
    runs: list[Path] = []
    for model, neuron in _models(recipe):
        run_dir = report / "runs" / f"{model}-{neuron}"
        cfg = train_config(recipe, model, neuron, run_dir)
        done = False
        if resume and (run_dir / "checkpoint.pt").exists():
            ck = read_checkpoint(run_dir)
            done = ck["epoch"] >= cfg.epochs and ck["meta"].get("train_config") == cfg.to_dict()
        print(f"== train {model} ({neuron}) on {cfg.dataset}{' [cached]' if done else ''}", flush=True)
        metrics = json.loads((run_dir / "metrics.json").read_text()) if done else train(cfg)
        summary["models"].append({"model": model, "neuron": neuron, "run_dir": str(run_dir),
                                  "test_acc": metrics["test_acc"],
                                  "train_seconds": sum(e["seconds"] for e in metrics["epochs"])})
        runs.append(run_dir)
    summary["stages"]["train_s"] = time.perf_counter() - t_start

    from quadexport.check import check
    from quadexport.exporter import export

    exp = recipe.get("export", {})
    chk = recipe.get("check", {})
    quad_run = runs[0]
    model = load(quad_run)
    onnx_path = report / f"{quad_run.name}.onnx"
    print(f"== export {quad_run.name} -> {onnx_path} ({exp.get('mode', 'decomposed')})", flush=True)
    export(model, onnx_path, mode=exp.get("mode", "decomposed"), opset=int(exp.get("opset", 20)))
    print(f"== check {onnx_path}", flush=True)
    rep = check(onnx_path, model, rtol=float(chk.get("rtol", 1e-5)), dataset=model.quadexport_meta.get("dataset"),
                data_dir=recipe.get("data", {}).get("data_dir"))
    write_json(report / "parity.json", rep.to_dict())
    summary["parity_ok"] = bool(rep.ok)
    summary["onnx"] = str(onnx_path)

    if not skip_bench:
        from quadexport.bench import bench

        b = recipe.get("bench", {})
        print("== bench", flush=True)
        br = bench([str(r) for r in runs], mode=exp.get("mode", "decomposed"), batches=tuple(b.get("batches", (1, 64))),
                   threads=b.get("threads"), min_seconds=float(b.get("min_seconds", 1.0)), out=report / "bench",
                   baselines=False)
        summary["bench"] = str(report / "bench" / "bench.json")
        summary["ratios"] = br.to_dict().get("ratios", [])
    summary["total_s"] = time.perf_counter() - t_start
    write_json(report / "summary.json", summary)
    (report / "summary.md").write_text(render_summary(summary))
    return summary


def render_summary(summary: dict[str, Any]) -> str:
    """Markdown summary of a pipeline run."""
    r = summary["recipe"]
    lines = [f"# {r['name']}", "", r.get("description", ""), "", "| model | neuron | test acc | train s |",
             "|---|---|---|---|"]
    for m in summary["models"]:
        lines.append(f"| {m['model']} | {m['neuron']} | {100 * m['test_acc']:.2f}% | {m['train_seconds']:.1f} |")
    lines += ["", f"ONNX: `{summary.get('onnx')}` — parity {'passed' if summary.get('parity_ok') else 'FAILED'} "
              f"(details in parity.json)", ""]
    if summary.get("ratios"):
        lines += ["| quadratic | baseline | runtime | batch | latency ratio | MAC ratio |", "|---|---|---|---|---|---|"]
        for x in summary["ratios"]:
            lines.append(f"| {x['quadratic']} | {x['baseline']} | {x.get('mode', '')} | {x['batch']} | "
                         f"{x['latency_ratio']:.2f} | {x['mac_ratio']:.2f} |")
    lines += ["", f"Total time {summary['total_s']:.0f} s."]
    return "\n".join(lines) + "\n"
