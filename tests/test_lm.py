"""Language models through every command (issue #31): the zoo's ``gpt``, text data, token inputs in export, check,
bench and compress, and the study's aggregation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import quadexport as q
from quadexport.cli import main
from quadexport.data.text import TAIL_FRACTION, TextPreprocessing, WindowSampler, open_text, read_corpus
from quadexport.errors import UsageError

LM_TRAIN = ["--model", "gpt", "--epochs", "1", "--train-subset", "128", "--test-subset", "16", "--batch-size", "32",
            "--optimizer", "adam", "--lr", "3e-3", "--relinear", "none", "--init", "kaiming"]


@pytest.mark.parametrize("neuron", ["t4", "fan"])
def test_quadratic_gpt_matches_relu_parameters(neuron):
    relu = q.count_params(q.create_model("gpt", neuron="relu"))
    quad = q.create_model("gpt", neuron=neuron)
    assert abs(q.count_params(quad) - relu) / relu <= 0.02
    assert quad.ffn_width < 4 * 64  # matched by a narrower feed-forward layer, not by luck
    wide = q.create_model("gpt", neuron=neuron, ffn_width=256)  # ffn_width= overrides the matching
    assert q.count_params(wide) > 1.2 * relu


def test_gpt_structure_and_causality():
    m = q.create_model("gpt", neuron="t4").eval()
    fc1 = m.blocks[0].ffn.fc1
    assert isinstance(fc1, q.QuadLinear) and fc1.neuron == "t4"
    assert isinstance(m.blocks[0].ffn.act, torch.nn.Identity)  # bilinear: no activation after the product
    x = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, prefix = m(x), m(x[:, :20])
    assert full.shape == (2, 64, 256)
    torch.testing.assert_close(full[:, :20], prefix, atol=1e-5, rtol=1e-5)  # the future does not leak back
    gelu = q.create_model("gpt", neuron="gelu")
    assert isinstance(gelu.blocks[0].ffn.act, torch.nn.GELU) and q.count_params(gelu) == q.count_params(
        q.create_model("gpt", neuron="relu"))
    # ReLinear init with a ReLU after the neuron: the quadratic model computes its same-width ReLU twin
    qm = q.create_model("gpt", neuron="fan", act="relu", ffn_width=256)
    twin, sd = q.create_model("gpt", neuron="relu"), qm.state_dict()
    twin.load_state_dict({k: sd[k.replace(".ffn.fc1.", ".ffn.fc1.r.")] for k in twin.state_dict()})
    with torch.no_grad():
        torch.testing.assert_close(qm.eval()(x), twin.eval()(x))


def test_text_file_split_and_windows(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(bytes(range(256)) * 20)
    train, val, how, files = read_corpus(f"text:{f}")
    assert len(train) + len(val) == 5120 and files == (1, 1)
    assert abs(len(val) / 5120 - TAIL_FRACTION) < 0.01 and "last 10%" in how
    src = open_text(f"text:{f}", context=16, train_subset=40)
    x, y = src.train[7]
    assert x.dtype == torch.int64 and x.shape == (16,) and torch.equal(x[1:], y[:-1])
    s = WindowSampler(len(src.train), 40, seed=3)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(1)
    assert a != list(s) and len(a) == 40 and max(a) < len(src.train)
    s.set_epoch(0)
    assert a == list(s)  # deterministic per epoch: a resumed run sees the same windows


def test_text_folder_split_by_file_and_pystdlib(tmp_path):
    for i in range(30):
        (tmp_path / f"f{i:02d}.txt").write_text(f"file {i} " * 20)
    (tmp_path / ".hidden").write_text("x" * 1000)
    train, val, how, files = read_corpus(f"text:{tmp_path}")
    assert files[0] + files[1] == 30 and files[1] >= 1 and "by name" in how
    assert read_corpus(f"text:{tmp_path}")[1].tobytes() == val.tobytes()  # the split is fixed
    p = open_text("pystdlib", test_subset=8).preprocessing
    assert p.files[0] > 500 and p.files[1] > 10 and p.train_bytes > 1e6  # the interpreter's own sources
    assert TextPreprocessing.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(UsageError, match="does not exist"):
        read_corpus(f"text:{tmp_path / 'nope'}")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """``quadexport train --model gpt --neuron t4 --dataset text:FILE --epochs 1`` (tiny)."""
    d = tmp_path_factory.mktemp("lm")
    text = d / "corpus.txt"
    text.write_bytes(Path(torch.__file__).read_bytes()[:40000])
    out = d / "run"
    assert main(["-q", "train", *LM_TRAIN, "--neuron", "t4", "--dataset", f"text:{text}", "--out", str(out)]) == 0
    return out


def test_train_writes_an_lm_run(lm_run, capsys):
    metrics = json.loads((lm_run / "metrics.json").read_text())
    assert metrics["task"] == "language-model" and math.isfinite(metrics["val_bpb"]) and 0 < metrics["val_bpb"] < 8
    assert metrics["epochs"][0]["steps"] == 4  # 128 windows / batch 32
    assert json.loads((lm_run / "config.json").read_text())["preprocessing"]["kind"] == "text"
    assert main(["info", str(lm_run)]) == 0
    out = capsys.readouterr().out
    assert "language model" in out and "bits per byte" in out and "logits" in out


def test_export_dynamic_length_runs_in_plain_onnxruntime(lm_run, tmp_path, capsys):
    path = tmp_path / "lm.onnx"
    assert main(["export", str(lm_run), str(path), "--dynamic-size"]) == 0
    assert "int64 tokens" in capsys.readouterr().out
    model = q.load(lm_run)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.type == "tensor(int64)" and inp.shape[0] == "batch" and inp.shape[1] == "length"
    rng = np.random.default_rng(0)
    for length in (64, 17):
        x = rng.integers(0, 256, (3, length), dtype=np.int64)
        got = sess.run(None, {inp.name: x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == (3, length, 256)
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5 and np.abs(got - ref).max() <= 1e-4


def test_check_and_bench_pass_through_the_cli(lm_run, tmp_path, capsys):
    path = tmp_path / "lm.onnx"
    assert main(["export", str(lm_run), str(path), "--dynamic-size", "--no-check"]) == 0
    capsys.readouterr()
    assert main(["check", str(path), str(lm_run), "--batch", "1", "4", "--opt-level", "all",
                 "--json", str(tmp_path / "parity.json")]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "parity.json").read_text())
    lengths = {ln["source"] for ln in rep["lines"]}
    assert {"random tokens len 64", "random tokens len 33"} <= lengths  # two sequence lengths
    assert any(s.startswith("text:") for s in lengths)  # and real windows of the run's text
    assert all(ln["ok"] for ln in rep["lines"]) and "passed" in out
    assert main(["bench", str(lm_run), "--batch", "1", "--min-seconds", "0.05", "--min-iters", "3", "--warmup", "1",
                 "--no-torch-eager", "--out", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    roles = {r["role"]: r for r in rows}
    assert set(roles) == {"quadratic", "twin", "mac_matched"}
    assert roles["twin"]["model"] == "gpt-w170"  # the same-width ReLU twin
    assert all(r["p50_ms"] > 0 for r in rows)


def test_token_model_refusals(lm_run, tmp_path):
    model = q.load(lm_run)
    with pytest.raises(UsageError, match="fp16"):
        q.export(model, tmp_path / "x.onnx", fp16=True)
    assert main(["export", str(lm_run), str(tmp_path / "y.onnx"), "--input", "raw"]) == 2
    from quadexport.zoo.inputsize import check_input_size

    with pytest.raises(UsageError, match="at most 64"):
        check_input_size(model, (65,), "gpt")


def _record(key: str, label: str, bpbs: list[float], steps: int = 10) -> dict:
    return {"key": key, "status": "ok", "labels": {"label": label, "steps": steps * len(bpbs)},
            "epochs": [{"val_bpb": b, "steps": steps, "seconds": 1.0} for b in bpbs]}


def test_study_aggregation_pairs_seeds_and_applies_the_rule():
    from quadexport.experiments.lm_report import aggregate_lm, verdict

    recipe = {"run": {"seeds": [0, 1, 2]}, "lm": {"equal_time": "curve"},
              "models": [{"label": "ReLU", "neuron": "relu", "role": "baseline"},
                         {"label": "bi", "neuron": "t4", "role": "quadratic"},
                         {"label": "fan", "neuron": "fan", "role": "quadratic"}]}
    res = {}
    for s in range(3):
        res[f"relu-s{s}"] = _record(f"relu-s{s}", "ReLU", [3.0, 2.5 + 0.01 * s])
        res[f"bi-s{s}"] = _record(f"bi-s{s}", "bi", [2.8, 2.3 + 0.01 * s])  # better by 0.2 on every seed
        res[f"fan-s{s}"] = _record(f"fan-s{s}", "fan", [2.9, 2.5 + 0.02 * (s - 1)])  # noise around ReLU
    lat = {"batches": {"1": {"ReLU": {"p50_ms": 1.0}, "bi": {"p50_ms": 1.05}, "fan": {"p50_ms": 1.3}}}}
    study = {"results": res, "latency": lat, "ratios": {"ReLU": 1.0, "bi": 0.5, "fan": 1.0},
             "steptime": {"seconds_per_step": {"ReLU": 0.1, "bi": 0.2, "fan": 0.1}}}
    arms = aggregate_lm(recipe, study)["arms"]
    assert arms["bi"]["diff_steps"]["per_seed"] == pytest.approx([-0.2] * 3)
    # same wall-clock at half the steps: read off the curve at step 10, where bi is at 2.8 vs ReLU's final 2.5x
    assert arms["bi"]["time_steps"] == 10 and arms["bi"]["diff_time"]["mean"] > 0.2
    assert not arms["bi"]["wins"] and not arms["fan"]["wins"]
    study["ratios"]["bi"] = 1.0
    arms = aggregate_lm(recipe, study)["arms"]
    assert arms["bi"]["wins"] and arms["bi"]["cheap"] and not arms["fan"]["cheap"]
    lines = verdict(aggregate_lm(recipe, study))
    assert "bi wins beyond seed noise" in lines[0] and "does **not**" in lines[1]


@pytest.mark.slow
def test_compress_takes_an_lm_run_with_its_task_loss(lm_run, tmp_path, capsys):
    text = json.loads((lm_run / "config.json").read_text())["dataset"]
    run = tmp_path / "fan"
    assert main(["-q", "train", *LM_TRAIN, "--neuron", "fan", "--dataset", text, "--out", str(run)]) == 0
    assert main(["compress", str(run), "--out", str(tmp_path / "c")]) == 2  # an LM run needs its task loss
    assert "--task-loss next-token" in capsys.readouterr().err
    assert main(["compress", str(run), "--out", str(tmp_path / "c"), "--task-loss", "next-token",
                 "--calib-samples", "64", "--val-samples", "32"]) == 0
    out = capsys.readouterr().out
    assert "validation next-token" in out and (tmp_path / "c" / "checkpoint.pt").exists()
    assert q.load(tmp_path / "c")(torch.zeros(1, 8, dtype=torch.int64)).shape == (1, 8, 256)
