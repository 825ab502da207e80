"""quadexport.experiments (``tools/experiments.py``, ``make results``) on the tiny budget: JSON schema, collapse
detection, mean ± std, XOR demo, report."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

import quadexport.experiments as E
from quadexport.cli.experiments import main
from quadexport.experiments.accuracy import accuracy_tasks
from quadexport.experiments.expressivity import accuracy, neuron_logit, train_neuron, xor_data
from quadexport.experiments.runner import macs28, cost
from quadexport.experiments.trainability import trainability_cells, trainability_tasks
from quadexport.pipeline import deep_merge


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`all --budget tiny` in-process (one job): 2 trainability runs + ResNet8 pair × 2 seeds + warm start, all on
    digits for 1 epoch, the tiny expressivity demos, and the report."""
    out = tmp_path_factory.mktemp("exp")
    assert main(["all", "--budget", "tiny", "--out", str(out), "--jobs", "1"]) == 0
    return out


RUN_KEYS = {"schema", "exp", "key", "labels", "config", "status", "error", "epochs", "epochs_done", "final_acc",
            "skipped_steps", "rollbacks", "init_norms", "wall_s", "cpu_s", "run_dir", "collapsed", "collapse_reasons"}
EPOCH_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "norm_wg", "norm_wb", "skipped_steps"}
ENVELOPE_KEYS = {"schema", "exp", "budget", "recipe", "command", "summary", "runs", "n_runs", "cpu_s", "wall_s",
                 "run_wall_s", "cpu_count", "finished"}


def test_trainability_json_schema(tiny):
    env = json.loads((tiny / "trainability.json").read_text())
    assert ENVELOPE_KEYS <= set(env)
    assert env["exp"] == "trainability" and env["budget"] == "tiny" and env["schema"] == E.SCHEMA_VERSION
    assert env["recipe"]["_path"] == "models/exp-trainability.toml" and env["recipe"]["_budget"] == "tiny"
    assert env["n_runs"] == 2  # the key comparison only: relinear+sg vs kaiming+none at one LR
    for run in env["runs"]:
        assert RUN_KEYS <= set(run)
        assert run["config"]["dataset"] == "digits" and run["config"]["epochs"] == 1
        assert run["config"]["max_rollbacks"] == 0
        assert run["status"] in ("ok", "diverged", "nonfinite")
        assert isinstance(run["collapsed"], bool) and isinstance(run["collapse_reasons"], list)
        assert run["cpu_s"] > 0 and run["wall_s"] > 0
        for row in run["epochs"]:
            assert EPOCH_KEYS <= set(row)
        assert set(run["init_norms"]) == {"norm_wg", "norm_wb"}
        assert "epoch 1/1" in (Path(run["run_dir"]) / "train.log").read_text()  # training output captured
    by_init = {r["labels"]["init"]: r for r in env["runs"]}
    assert by_init["relinear"]["init_norms"] == {"norm_wg": 0.0, "norm_wb": 0.0}  # ReLinear: W_g = W_b = 0
    assert by_init["kaiming"]["init_norms"]["norm_wg"] > 1.0
    cells = env["summary"]["cells"]
    assert len(cells) == 2 and all(c["key_cell"] for c in cells)
    for c in cells:
        assert c["n"] == 1 and 0 <= c["collapse_rate"] <= 1
        assert len(c["per_epoch"]["norm_wg"]) == 1


def test_accuracy_and_warmstart_json(tiny):
    env = json.loads((tiny / "accuracy.json").read_text())
    rows = {r["label"]: r for r in env["summary"]["rows"]}
    assert set(rows) == {"QResNet8", "ResNet8"}
    q, r = rows["QResNet8"], rows["ResNet8"]
    assert q["acc"]["n"] == r["acc"]["n"] == 2 and q["seeds"] == [0, 1]
    assert q["params"] > 2.5 * r["params"] and q["macs_28"] > 2.5 * r["macs_28"]
    assert q["acc"] == E.mean_std(q["acc_values"])
    (delta,) = env["summary"]["deltas"]
    assert delta["baseline"] == "ResNet8" and delta["n"] == 2
    assert delta["delta"]["mean"] == pytest.approx(sum(q["acc_values"]) / 2 - sum(r["acc_values"]) / 2)
    ws = json.loads((tiny / "warmstart.json").read_text())["summary"]
    assert set(ws["variants"]) == {"scratch", "warm", "twin", "twin_long"}
    assert ws["variants"]["warm"]["n"] == 1 and len(ws["variants"]["twin_long"]["curve"]) == 2
    warm_cfg = next(r for r in json.loads((tiny / "warmstart.json").read_text())["runs"]
                    if r["labels"]["variant"] == "warm")["config"]
    assert warm_cfg["warm_start"].endswith("digits_resnet8-relu_s0")


def test_cached_runs_are_reused(tiny, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="quadexport.experiments"):
        assert main(["trainability", "--budget", "tiny", "--out", str(tiny), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "== trainability (tiny)" in out  # the CLI prints the progress log
    assert "to do" not in out  # nothing retrained


def test_reaggregate_keeps_summaries(tiny):
    before = json.loads((tiny / "accuracy.json").read_text())
    E.reaggregate(tiny)
    after = json.loads((tiny / "accuracy.json").read_text())
    assert after["summary"] == before["summary"] and after["cpu_s"] == before["cpu_s"]


def test_report_written(tiny):
    md = (tiny / "docs" / "results.md").read_text()
    for section in ("## Compute", "## Findings (computed)", "## 1. Trainability", "## 2. Accuracy",
                    "## 3. Expressivity", "## 4. Warm start"):
        assert section in md
    assert "tools/experiments.py all --budget tiny" in md and "CPU time" in md
    assert "(recipe `models/exp-accuracy.toml`)" in md
    for png in ("trainability_norms", "trainability_acc", "accuracy_vs_macs", "expressivity_boundaries",
                "expressivity_regression", "warmstart_curves"):
        assert (tiny / "docs" / "img" / f"{png}.png").stat().st_size > 1000


def test_xor_demo_single_neuron(tiny):
    rows = json.loads((tiny / "expressivity.json").read_text())["summary"]["classification"]
    acc = {(r["task"], r["kind"]): r["train_acc"]["mean"] for r in rows}
    assert acc["xor", "quadratic"] == 1.0
    assert acc["xor", "linear"] <= 0.75
    assert acc["disk", "quadratic"] >= 0.99 and acc["disk", "linear"] < 0.9


def test_xor_neuron_logit_matches_module():
    import torch

    x, y = xor_data(40, 3)
    fit = train_neuron("quadratic", x, y, 300, 0.05, 0)
    with torch.no_grad():
        ref = fit["neuron"](x).squeeze(1).double().numpy()
    assert neuron_logit("quadratic", fit["params"], x.numpy()) == pytest.approx(ref, rel=1e-4, abs=1e-4)
    assert accuracy(fit["neuron"], x, y) == 1.0


def test_forced_divergence_is_a_collapse(tmp_path):
    cfg = dict(model="resnet8", neuron="fan", dataset="digits", train_subset=100, test_subset=50, epochs=1,
               batch_size=32, lr=1e3, max_rollbacks=0, relinear={"mode": "none", "init": "kaiming"})
    task = E.train_task("trainability", "forced", tmp_path, cfg, {"init": "kaiming", "reg": "none"}, 0.0)
    assert task.config["out"] == str(tmp_path / "rundirs" / "trainability" / "forced")
    res = E.run_train(task)
    assert res["collapsed"]
    assert res["status"] in ("diverged", "nonfinite") or "nan_steps" in res["collapse_reasons"]
    assert res["final_acc"] is None or res["final_acc"] <= 0.15


def _fake(status="ok", accs=(0.8,), losses=(1.0,), skipped=0):
    return {"status": status, "skipped_steps": skipped, "final_acc": accs[-1] if status == "ok" else None,
            "epochs": [{"test_acc": a, "train_loss": loss} for a, loss in zip(accs, losses)]}


@pytest.mark.parametrize("run,collapsed,reasons", [
    (_fake(), False, []),
    (_fake(accs=(0.3, 0.15), losses=(2.0, 1.9)), True, ["chance"]),
    (_fake(accs=(0.5, 0.5), losses=(2.0, 2.5)), True, ["loss_diverged"]),
    (_fake(accs=(0.5,), losses=(2.5,)), False, []),  # one epoch: no trajectory, no divergence verdict
    (_fake(skipped=2), True, ["nan_steps"]),
    (_fake(status="diverged", accs=(), losses=()), True, ["diverged"]),
    (_fake(status="nonfinite", accs=(), losses=()), True, ["nonfinite"]),
])
def test_classify(run, collapsed, reasons):
    assert E.classify(run, 0.15) == (collapsed, reasons)


def test_mean_std():
    s = E.mean_std([0.8, 0.9, 1.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1)  # sample std
    assert E.mean_std([0.5]) == {"n": 1, "mean": 0.5, "std": 0.0}
    assert E.mean_std([None, float("nan")]) == {"n": 0, "mean": None, "std": None}
    assert E.mean_std([1.0, None, 3.0])["mean"] == 2.0
    assert E.fmt_ms(E.mean_std([0.8, 0.9, 1.0])) == "90.0 ± 10.0"
    assert E.fmt_ms(E.mean_std([])) == "—"


def test_grid_aliases_and_budget_override():
    small = E.load_experiment_recipe("trainability", "small")
    cells = trainability_cells(small)
    assert len(cells) == len(small["grid"]["lrs"]) * len(small["grid"]["inits"]) * len(small["grid"]["regularisers"])
    sg1 = next(c for c in cells if c["reg"] == "sg-1")
    assert sg1["source_reg"] == "none" and sg1["relinear"]["mode"] == "none"
    key = [c for c in cells if c["key_cell"]]
    assert all(len(c["seeds"]) >= 3 for c in key)
    tasks = trainability_tasks(small, Path("/nonexistent"))
    assert len({t.key for t in tasks}) == len(tasks)  # aliases share runs
    tiny = E.load_experiment_recipe("trainability", "tiny")
    assert tiny["train"]["dataset"] == "digits" and tiny["train"]["model"] == "resnet8"
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}
    with pytest.raises(ValueError, match="budget"):
        E.load_experiment_recipe("trainability", "huge")
    with pytest.raises(ValueError, match="does not declare experiment 'trainability'"):
        E.load_experiment_recipe("trainability", "small", path="models/exp-accuracy.toml")


def test_accuracy_tasks_share_models_across_groups():
    rec = E.load_experiment_recipe("accuracy", "small")
    tasks = accuracy_tasks(rec, Path("/nonexistent"))
    keys = [t.key for t in tasks]
    assert len(keys) == len(set(keys))
    # ResNet20 is both depth8's MAC-matched baseline and depth20's twin: trained once per dataset and seed
    n_seeds = len(rec["run"]["seeds"])
    assert sum(k.startswith("fashion-mnist_resnet20-relu_") for k in keys) == n_seeds


def test_mac_matching_claims():
    """QResNet8 ≈ ResNet20 and QResNet20 ≈ ResNet56 in MACs at 28×28 (within 15 %)."""
    for quad, relu in (("resnet8", "resnet20"), ("resnet20", "resnet56")):
        q, r = macs28(quad, "fan"), macs28(relu, "relu")
        assert abs(q / r - 1) < 0.15, (quad, relu, q, r)


def test_cli_subcommand_registers():
    import argparse

    from quadexport.cli import experiments as cli_experiments

    sub = argparse.ArgumentParser(prog="quadexport").add_subparsers(dest="command")
    cli_experiments.register(sub)
    a = sub.choices["experiments"].parse_args(["accuracy", "--budget", "tiny", "--jobs", "1"])
    assert (a.experiment, a.budget, a.jobs, a.threads, a.func) == ("accuracy", "tiny", 1, 1, cli_experiments.run)


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        main(["nope"])
    assert math.isfinite(cost("resnet8", "fan", 100, 10, 1))
