"""quadexport.pipeline: recipe validation (one format for pipeline and experiment recipes) and a tiny end-to-end
run through the ``quadexport pipeline`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quadexport.cli import main as cli_main
from quadexport.errors import UsageError
from quadexport.pipeline import PipelineSummary, load_recipe, run_pipeline, train_config

MODELS = Path(__file__).resolve().parents[1] / "models"

TINY = """name = "tiny"
description = "test recipe"

[model]
name = "cnn"
neuron = "fan"
width = 4

[data]
dataset = "digits"
train_subset = 200
test_subset = 50

[train]
epochs = 1
{train_extra}

[baselines]
twin = true
"""


def _recipe(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_committed_recipes_load():
    for path in sorted(MODELS.glob("*.toml")):
        recipe = load_recipe(path)
        assert recipe["name"] == path.stem and "budget" not in recipe
    tiny = load_recipe(MODELS / "exp-trainability.toml", budget="tiny")
    assert tiny["train"]["dataset"] == "digits" and tiny["train"]["model"] == "resnet8"  # merged, not replaced


def test_key_typo_names_key_file_and_nearest_key(tmp_path):
    path = _recipe(tmp_path, TINY.format(train_extra="batchsize = 64"))
    with pytest.raises(UsageError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "'batchsize'" in msg and "[train]" in msg and str(path) in msg and "did you mean 'batch_size'?" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text,expected", [
    (TINY.format(train_extra="") + "\n[trian]\nepochs = 2\n", "unknown section [trian]"),
    (TINY.format(train_extra="") + "\n[export]\nopset = 20\nmdoe = 'fused'\n", "did you mean 'mode'?"),
    (TINY.format(train_extra="model = 'resnet8'"), "unknown key 'model' in [train]"),  # comes from [model]
    (TINY.format(train_extra="") + "\n[budget.tiny.train]\nepohcs = 1\n", "[budget.tiny.train]"),
    (TINY.format(train_extra="").replace('name = "cnn"\n', ""), "needs [model] name"),
    (TINY.format(train_extra="lr = "), "not valid TOML"),
])
def test_bad_pipeline_recipes(tmp_path, text, expected):
    with pytest.raises(UsageError, match=expected.replace("[", r"\[").replace("?", r"\?")):
        load_recipe(_recipe(tmp_path, text))


def test_experiment_recipe_keys_are_checked(tmp_path):
    text = (MODELS / "exp-accuracy.toml").read_text()
    bad = text.replace('relinear = { mode = "none" }', 'relinear = { mdoe = "none" }')
    assert bad != text
    with pytest.raises(UsageError, match=r"unknown key 'mdoe' in \[models #8.relinear\]; did you mean 'mode'"):
        load_recipe(_recipe(tmp_path, bad))
    grid = (MODELS / "exp-trainability.toml").read_text().replace("key_seeds =", "keyseeds =")
    with pytest.raises(UsageError, match=r"\[grid\]; did you mean 'key_seeds'"):
        load_recipe(_recipe(tmp_path, grid))
    with pytest.raises(UsageError, match="unknown section \\[model\\] for an experiment recipe"):
        load_recipe(_recipe(tmp_path, text + '\n[model]\nname = "cnn"\n'))
    with pytest.raises(UsageError, match="no \\[budget.tinny\\]; did you mean 'tiny'"):
        load_recipe(MODELS / "exp-accuracy.toml", budget="tinny")
    with pytest.raises(UsageError, match="experiment recipe"):
        run_pipeline(MODELS / "exp-accuracy.toml", out=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_budget_override_and_train_config(tmp_path):
    text = TINY.format(train_extra="batch_size = 32") + "\n[budget.quick.train]\nbatch_size = 16\n"
    path = _recipe(tmp_path, text)
    assert load_recipe(path)["train"] == {"epochs": 1, "batch_size": 32}
    recipe = load_recipe(path, budget="quick")
    assert recipe["train"] == {"epochs": 1, "batch_size": 16}
    cfg = train_config(recipe, "cnn", "relu", tmp_path / "run")
    assert (cfg.batch_size, cfg.width, cfg.relinear.mode, cfg.dataset) == (16, 4, "none", "digits")


@pytest.mark.slow  # ~40 s on 2 cores: two trainings, a dynamo export and the parity check
def test_pipeline_cli_end_to_end(tmp_path, capsys):
    path = _recipe(tmp_path, TINY.format(train_extra="batch_size = 32"), "tiny.toml")
    report = tmp_path / "report"
    assert cli_main(["pipeline", str(path), "--out", str(report), "--skip-bench"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln for ln in out if ln.startswith("==")] == [  # the stage lines, as the pipeline printed them before
        "== train cnn (fan) on digits", "== train cnn (relu) on digits",
        f"== export cnn-fan -> {report / 'cnn-fan.onnx'} (decomposed)", f"== check {report / 'cnn-fan.onnx'}"]
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary) == {"recipe", "report", "models", "stages", "parity_ok", "onnx", "total_s"}
    accs = [m["test_acc"] for m in summary["models"]]
    assert [ln.strip() for ln in out if "test accuracy" in ln] == [
        f"cnn    fan: test accuracy {100 * accs[0]:.2f}%", f"cnn   relu: test accuracy {100 * accs[1]:.2f}%"]
    assert f"quadratic - ReLU twin: {100 * (accs[0] - accs[1]):+.2f} pp" in out
    assert out[-1] == f"parity: passed; report: {report}"
    assert summary["parity_ok"] and (report / "parity.json").exists() and "| cnn | fan |" in \
        (report / "summary.md").read_text()
    again = run_pipeline(path, out=report, skip_bench=True)  # finished runs are reused
    assert isinstance(again, PipelineSummary) and [m.test_acc for m in again.models] == accs
