"""The studies as ``quadexport experiments`` subcommands (compression, quadratize) on the tiny budget: the files a run
writes, their tables, and that a second run reuses the first one's runs; plus the recipe logic without training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quadexport.errors import UsageError
from quadexport.experiments.compression import CompressionStudy
from quadexport.experiments.quadratize_report import latency, paired
from quadexport.experiments.quadratize_study import QuadratizeStudy

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str | Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.glob(pattern))}


def _study(tmp_path_factory, name: str) -> tuple[Path, subprocess.CompletedProcess, dict, subprocess.CompletedProcess]:
    """Run ``quadexport experiments NAME --budget tiny`` twice; ``(out, first, mtimes after the first, second)``."""
    out = tmp_path_factory.mktemp(name)
    first = _cli("experiments", name, "--budget", "tiny", "--out", out, "--jobs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {**_mtimes(out, "runs/**/*.json"), **_mtimes(out, f"{name}/**/*.json"), **_mtimes(out, "rundirs/**/*.pt")}
    second = _cli("experiments", name, "--budget", "tiny", "--out", out, "--jobs", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    return out, first, before, second


@pytest.fixture(scope="module")
def compression(tmp_path_factory):
    return _study(tmp_path_factory, "compression")


@pytest.fixture(scope="module")
def quadratize(tmp_path_factory):
    return _study(tmp_path_factory, "quadratize")


@pytest.mark.slow
def test_compression_study_cli(compression):
    out, first, _, _ = compression
    assert "== compression (tiny)" in first.stdout and "2 run(s) to do" in first.stdout
    env = json.loads((out / "compression.json").read_text())
    assert env["exp"] == "compression" and env["budget"] == "tiny" and env["n_runs"] == 2
    assert env["recipe"]["_path"] == "models/exp-compression.toml"
    assert env["command"] == "quadexport experiments compression --budget tiny"
    rows = {r["label"]: r for r in env["summary"]["rows"]}
    # trained pair, the ReLU control, both variants (the int8 one from the fine-tuned one), the twin's two forms
    assert set(rows) == {"resnet8-relu", "resnet8-fan", "resnet8-relu-ft1", "prune-t0.2-ft2",
                         "prune-t0.2-ft2-int8 [int8]", "resnet8-relu [1x1-conv shortcuts]", "resnet8-relu [int8]"}
    assert rows["resnet8-relu"]["ratio_runs1"] == [1.0, 1.0] and rows["resnet8-fan"]["delta_pp"] == 0.0
    assert rows["resnet8-fan"]["macs"] > 2 * rows["resnet8-relu"]["macs"]  # Fan: three convs per layer
    assert rows["prune-t0.2-ft2"]["macs"] < rows["resnet8-fan"]["macs"]
    for r in rows.values():
        assert 0.0 <= r["test_acc"] <= 1.0 and all(v > 0 for v in r["ratio_runs8"])
    assert len(env["summary"]["load"]) == 2  # two interleaved timing runs
    docs = out / "docs"
    table = (docs / "compression" / "table.md").read_text()
    assert table.startswith("| model | kind | test acc | Δ vs resnet8-fan |") and "(run 1 / run 2)" in table
    assert json.loads((docs / "compression" / "study.json").read_text())["rows"] == env["summary"]["rows"]
    assert [r["threshold"] for r in env["summary"]["sweep"]["rows"]] == [0.0, 0.2, 1.1]
    assert "t0.2-a16-auto-conv" in env["summary"]["latsweep"]["info"]
    for png in ("compression_pareto", "compression_scores"):
        assert (docs / "img" / f"{png}.png").stat().st_size > 1000
    report = json.loads((out / "compression" / "compressed" / "prune-t0.2-ft2-int8" / "compress_report.json")
                        .read_text())
    assert report["int8"] and report["source"].endswith("prune-t0.2-ft2")  # started from the other variant


@pytest.mark.slow
def test_compression_rerun_reuses_everything(compression):
    out, _, before, second = compression
    assert "to do" not in second.stdout  # no training
    for step in ("control resnet8-relu-ft1: done", "variant prune-t0.2-ft2: done", "sweep: done", "latsweep: done",
                 "timing run 2: done"):
        assert step in second.stdout
    after = {p: Path(p).stat().st_mtime_ns for p in before}
    assert after == before and len(before) >= 8  # records, checkpoints and measurements untouched


@pytest.mark.slow
def test_quadratize_study_cli(quadratize):
    out, first, _, _ = quadratize
    assert "4 run(s) to do" in first.stdout and "6 run(s) to do" in first.stdout  # from scratch, then warm starts
    env = json.loads((out / "quadratize.json").read_text())
    assert env["exp"] == "quadratize" and env["n_runs"] == 10
    runs = env["summary"]["runs"]
    assert set(runs) == {"base", "relu-ft", "relu-time14", "fan-full", "fan-adapter"}
    assert all(set(v) == {"0", "1"} for v in runs.values())
    ft = next(r for r in env["runs"] if r["key"] == "fan-adapter-s1")
    assert ft["config"]["warm_start"].endswith("base-s1") and ft["config"]["train_only"] == "quadratic+bn+head"
    assert env["summary"]["latency"]["base-s0"] == {"1": 1.0, "8": 1.0}
    assert env["summary"]["latency"]["fan-full-s0"]["1"] > 1.0
    step = env["summary"]["steptime"]
    assert step["base"]["ratio"] == 1.0 and step["fan-full"]["ratio"] > step["base"]["ratio"]
    docs = out / "docs" / "quadratize"
    table = (docs / "table.md").read_text()
    assert "| fan-full | 2 |" in table and "vs ReLU from scratch, same CPU time (paired Δ pp)" in table
    assert "vs ReLU, BN + head" not in table  # a control that was not run has no column
    assert json.loads((docs / "study.json").read_text())["runs"] == runs
    assert (docs / "study.png").stat().st_size > 1000


@pytest.mark.slow
def test_quadratize_rerun_reuses_everything(quadratize):
    out, _, before, second = quadratize
    assert "to do" not in second.stdout and "bench: done" in second.stdout and "step time: done" in second.stdout
    assert {p: Path(p).stat().st_mtime_ns for p in before} == before and len(before) >= 10


def test_study_recipes_and_selection(tmp_path):
    c = CompressionStudy.load("tiny", tmp_path)
    assert list(c.variants()) == ["prune-t0.2-ft2", "prune-t0.2-ft2-int8"]  # the selected one and its source
    assert c.control_label == "resnet8-relu-ft1"
    c.recipe["compression"]["variants"] = ["nope"]
    with pytest.raises(UsageError, match="unknown variant 'nope'"):
        c.variants()
    full = CompressionStudy.load("small", tmp_path)
    assert len(full.variants()) == 11 and full.settings["source"] == "resnet20-fan"
    q = QuadratizeStudy.load("tiny", tmp_path)
    q.recipe["quadratize"]["configs"] = ["fan-adapter"]
    assert list(q.configs()) == ["base", "fan-adapter"]  # its warm-start source comes along
    assert q.neuron("fan-adapter") == "fan" and q.parts("fan-adapter") == "quadratic+bn+head"
    assert (q.parts("base"), q.neuron("base")) == ("all", "relu")


def test_quadratize_report_helpers():
    assert paired({0: 0.90, 1: 0.80}, {0: 0.89, 1: 0.82}) == "-0.50 ± 2.12 (n=2)"
    assert paired({0: 0.9}, {1: 0.9}) == "–"
    bench = {"rows": [{"source": "/r/base-s0", "batch": 1, "p50_ms": 2.0, "mode": "decomposed"},
                      {"source": "/r/fan-full-s0", "batch": 1, "p50_ms": 6.0, "mode": "decomposed"},
                      {"source": "/r/fan-full-s0", "batch": 1, "p50_ms": 9.0, "mode": "torch"}]}
    assert latency(bench, "base") == {"base-s0": {1: 1.0}, "fan-full-s0": {1: 3.0}}
