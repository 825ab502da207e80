"""Typed run metadata (issue #28): one dataclass reads every run layout written so far and writes the same dict;
run dirs written before the package restructuring load unchanged (fixtures made by quadexport 89ceca2:
``train --model cnn --width 4 --dataset digits --epochs 1 --train-subset 200`` fan and relu, and ``quadratize`` of
the relu run with t4; ``reference_output.npy``: that version's outputs on a fixed input)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import quadexport as q
from quadexport.runmeta import RunMeta, input_shape_of

LEGACY = Path(__file__).parent / "fixtures" / "legacy-runs"
RUNS = ("cnn-fan", "cnn-relu", "cnn-quadratized")


def _fixed_input() -> torch.Tensor:
    return torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)


@pytest.mark.parametrize("run", RUNS)
def test_runs_written_before_the_restructuring_load_with_the_same_outputs(run, tmp_path):
    d = tmp_path / run
    shutil.copytree(LEGACY / run, d)
    model = q.load(d)
    with torch.no_grad():
        y = model(_fixed_input()).numpy()
    assert np.array_equal(y, np.load(d / "reference_output.npy"))
    meta = RunMeta.of(model)
    assert meta.input_shape == (1, 8, 8) and meta.dataset == "digits" and meta.num_classes == 10
    assert meta.neuron == json.loads((d / "config.json").read_text()).get("neuron", meta.neuron)


def test_legacy_run_goes_through_export_and_check_on_the_cli(tmp_path):
    d = tmp_path / "run"
    shutil.copytree(LEGACY / "cnn-fan", d)
    onnx = tmp_path / "m.onnx"
    for args in (["export", str(d), str(onnx)], ["check", str(onnx), str(d)]):
        r = subprocess.run([sys.executable, "-m", "quadexport", "-q", *args], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr


def test_the_dict_layout_round_trips_and_unknown_keys_are_kept():
    old = {"dataset": "digits", "input_shape": [1, 8, 8], "num_classes": 10, "test_acc": 0.5,
           "relinear": {"mode": "sg"}, "train_config": {"lr": 0.1}, "preprocessing": {"kind": "image"},
           "task": "classification", "outputs": {"task": "classification", "tree": None, "outputs": []}}
    meta = RunMeta.from_dict(old, {"neuron": "fan"})
    assert meta.input_shape == (1, 8, 8) and meta.neuron == "fan" and meta.extra["relinear"] == {"mode": "sg"}
    assert meta.to_dict() == old
    assert meta.is_classifier and meta.input_shapes() == [(1, 8, 8)]


def test_input_shape_from_the_build_config_when_the_run_recorded_none():
    model = q.create_model("cnn", neuron="fan", in_channels=3, input_size=(16, 12))
    assert input_shape_of(model) == (3, 16, 12)
    assert input_shape_of(model, (1, 4, 4)) == (1, 4, 4)
    assert input_shape_of(torch.nn.Linear(2, 2)) is None
    two = RunMeta(inputs=[{"name": "x", "shape": [1]}, {"name": "t", "shape": [1]}])
    assert two.input_shapes() == [(1,), (1,)]
