"""Issue #16: a command line people can live in. Real ``python -m quadexport`` subprocesses: fast ``--help``, one
vocabulary, errors that point at the fix (swapped arguments, datasets of the wrong shape, a file checked against
another run, flags that would not apply), ``info``, and the CLI wiring of ``export --input raw``/``--save-io`` and
``check --runtime openvino``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import quadexport as q
from quadexport.runs.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


def _one_line_error(r: subprocess.CompletedProcess, command: str, *words: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"quadexport {command}: error: "), r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A digits cnn/fan run and a cnn/relu run (untrained weights, perturbed so the outputs vary), and the fan
    run's decomposed export."""
    d = tmp_path_factory.mktemp("usage")
    out = {}
    for neuron in ("fan", "relu"):
        model = q.create_model("cnn", neuron, in_channels=1, input_size=8, width=4)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out[neuron] = d / f"run-{neuron}"
        save_checkpoint(out[neuron], model, {"dataset": "digits", "input_shape": [1, 8, 8]})
    out["onnx"] = q.export(q.load(out["fan"]), d / "fan.onnx")
    return out


# ---------------------------------------------------------------------------------------------------- speed & API

def test_help_is_fast_and_imports_neither_torch_nor_onnx():
    probe = ("import sys, time; t = time.perf_counter(); from quadexport.cli import build_parser; "
             "p = build_parser(); p.format_help(); print(time.perf_counter() - t, 'torch' in sys.modules, "
             "'onnx' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    seconds, torch_loaded, onnx_loaded = r.stdout.split()
    assert (torch_loaded, onnx_loaded) == ("False", "False"), "building the parser imported torch/onnx"
    t0 = time.perf_counter()
    r = _cli("--help")
    wall = time.perf_counter() - t0
    assert r.returncode == 0 and "pipeline" in r.stdout and "info" in r.stdout
    assert wall < 2.0, f"quadexport --help took {wall:.2f} s (parser {float(seconds):.2f} s)"


def test_cli_copies_of_library_names_agree():
    from quadexport.cli.argtypes import BUDGETS, BUILTIN_DATASETS, OPT_LEVELS
    from quadexport.data import list_datasets
    from quadexport.experiments import BUDGETS as LIB_BUDGETS
    from quadexport.exporter.session import OPT_LEVELS as LIB_OPT_LEVELS

    assert list(BUILTIN_DATASETS) == list_datasets()
    assert tuple(OPT_LEVELS) == tuple(LIB_OPT_LEVELS) and tuple(BUDGETS) == tuple(LIB_BUDGETS)
    from quadexport.training.adapter import ADAPTER_DEFAULT as LIB_ADAPTER_DEFAULT
    from quadexport.cli.argtypes import ADAPTER_DEFAULT

    assert ADAPTER_DEFAULT == LIB_ADAPTER_DEFAULT


def test_python_api_names(runs):
    import quadexport

    assert {"load", "export", "make_session", "check"} <= set(dir(quadexport))
    report = quadexport.check(runs["onnx"], quadexport.load(runs["fan"]), batches=(2,), opt_levels=("all",),
                              dataset=False, verbose=False)
    assert report.ok and len(report.lines) == 1
    import quadexport.check as module  # the submodule import leaves a callable in its place

    assert module(runs["onnx"], quadexport.load(runs["fan"]), batches=(1,), opt_levels=("disable",),
                  dataset=False, verbose=False).ok


def test_every_option_shows_its_default_and_commands_have_descriptions():
    from quadexport.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    for name in ("train", "export", "check", "pipeline", "info", "bench"):
        assert sub[name].description, name
        for a in sub[name]._actions:
            typed = a.option_strings and "==SUPPRESS==" not in (a.help, a.default) and not isinstance(a.default, bool) \
                and isinstance(a.default, (int, float, str, list, tuple))
            if typed:
                assert "default" in a.help, f"{name} {a.option_strings}: {a.help!r}"
    flags = {n: set(sub[n]._option_string_actions) for n in ("check", "bench")}
    assert {"--batch", "--batches", "--opt-level", "--opt-levels"} <= flags["check"] & flags["bench"]
    assert "--dataset" in flags["check"]


def test_info_columns_and_mac_factors():
    from quadexport.cli.info import mac_factor

    r = _cli("info", "neurons")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = lines[1].split()
    assert header == ["name", "formula", "quadratic", "MACs"]
    rows = {ln.split()[0]: ln for ln in lines[2:]}
    assert set(rows) == {"relu", *q.list_neurons()}  # info and list_neurons agree
    assert len({len(ln) - len(ln.lstrip()) for ln in lines[1:]}) == 1
    assert {ln.rindex("x") for ln in lines[2:] if ln.split()[-1].startswith("x")} and \
        len({len(ln) for ln in lines[1:]}) == 1  # right-aligned last column: every row ends at the same place
    for n in q.list_neurons():
        assert rows[n].split()[-1] == f"x{mac_factor(n):.3g}"
    assert mac_factor("fan") == 3 and 1 < mac_factor("fan_pw") < 2  # cheap branches count, and not as full ones


# ---------------------------------------------------------------------------------------------------- errors

def test_swapped_arguments_and_directories(runs):
    _one_line_error(_cli("check", runs["fan"], runs["onnx"]), "check", "is a directory, not an ONNX file",
                    "did you swap the arguments?")
    _one_line_error(_cli("export", runs["onnx"], runs["fan"] / "x.onnx"), "export", "is an ONNX file, not a run",
                    "did you swap the arguments?")
    _one_line_error(_cli("export", runs["fan"], runs["fan"]), "export", "is a directory, not an output .onnx file",
                    "model.onnx")


def test_dataset_of_the_wrong_shape_is_one_line_and_data_is_an_alias(runs):
    r = _cli("check", runs["onnx"], runs["fan"], "--dataset", "fashion-mnist", "--batch", "1")
    _one_line_error(r, "check", "1x28x28", "takes 1x8x8", "(digits)")
    typo = _cli("check", runs["onnx"], runs["fan"], "--dataset", "fashon")  # argparse's usage + error line
    assert typo.returncode == 2 and "did you mean 'fashion-mnist'?" in typo.stderr.splitlines()[-1]
    r = _cli("check", runs["onnx"], runs["fan"], "--data", "digits", "--batch", "1", "--opt-level", "all")
    assert r.returncode == 0 and "digits[360]" in r.stdout and "--data is deprecated" in r.stderr


def test_file_checked_against_another_run(runs):
    _one_line_error(_cli("check", runs["onnx"], runs["relu"]), "check", "fan", "relu",
                    "check a file against the run it was exported from")


@pytest.mark.parametrize("args, words", [
    (["--relinear", "none", "--lr-ratio", "0.5"], ["--lr-ratio", "--relinear sg"]),
    (["--neuron", "relu", "--relinear", "sg"], ["--neuron relu", "--relinear"]),
    (["--relinear", "sg", "--alpha", "0.1"], ["--alpha", "--relinear sw"]),
    (["--model", "cnnn"], ["did you mean 'cnn'?"]),
    (["--neuron", "fann"], ["did you mean 'fan'?"]),
])
def test_train_refuses_flags_that_would_not_apply(tmp_path, capsys, args, words):
    from quadexport.cli import main

    assert main(["train", "--out", str(tmp_path / "r"), "--epochs", "1", *args]) == 2  # in-process: same path
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("quadexport train: error: ") and all(w in err for w in words)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------- wiring

@pytest.mark.slow  # several subprocesses (each imports torch and onnxruntime)
def test_export_raw_input_save_io_and_check(runs, tmp_path):
    from quadexport.data import load_dataset

    out, io = tmp_path / "raw.onnx", tmp_path / "io"
    r = _cli("export", runs["fan"], out, "--input", "raw", "--save-io", io)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "input: raw pixels" in r.stdout
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["quadexport.input"] == "raw" and "raw pixel values" in meta["quadexport.input_formula"]
    assert {p.name for p in io.iterdir()} >= {"input.npy", "expected.npy", "io.json"}
    x = np.load(io / "input.npy")
    assert x.shape == (4, 1, 8, 8) and x.min() >= -1e-4 and x.max() <= 16 + 1e-4 and x.max() > 1  # raw 0-16

    import onnxruntime as ort

    ds = load_dataset("digits")  # raw pixels in, the torch model on the normalised path: same logits
    raw = (ds.x_test[:16] * 0.3761 + 0.3054) * 16
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": raw.numpy()})[0]
    with torch.no_grad():
        ref = q.load(runs["fan"])(ds.x_test[:16]).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)

    r = _cli("check", out, runs["fan"], "--batch", "1", "5", "--opt-level", "all")
    assert r.returncode == 0 and "all 3 checks passed" in r.stdout, r.stdout + r.stderr
    plain = {p.key: p.value for p in onnx.load(str(runs["onnx"])).metadata_props}
    assert plain.get("quadexport.input", "normalized") == "normalized"


@pytest.mark.slow  # several subprocesses (each imports torch and onnxruntime)
def test_check_runtime_openvino(runs, tmp_path):
    pytest.importorskip("openvino")
    r = _cli("check", runs["onnx"], runs["fan"], "--runtime", "openvino", "--batch", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "openvino-cpu f32 batch 2" in r.stdout
    function = tmp_path / "f.onnx"
    assert _cli("export", runs["fan"], function, "--mode", "function", "--no-check").returncode == 0
    _one_line_error(_cli("check", function, runs["fan"], "--runtime", "openvino"), "check",
                    "OpenVINO cannot run", "--mode decomposed")


@pytest.mark.slow  # several subprocesses (each imports torch and onnxruntime)
def test_qdq_file_is_checked_by_top1_on_real_data(runs, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from quadexport.data import load_dataset

    xs = load_dataset("digits").x_test[:32].numpy()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": xs[i:i + 8]} for i in range(0, 32, 8)])

        def get_next(self):
            return next(self.it, None)

    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(runs["onnx"]), str(qdq), Reader(), quant_format=QuantFormat.QDQ)
    model = onnx.load(str(qdq))  # keep the quadexport metadata the quantiser dropped
    for k, v in {p.key: p.value for p in onnx.load(str(runs["onnx"])).metadata_props}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(qdq))
    report = q.check(qdq, q.load(runs["fan"]), batches=(1, 64), opt_levels=("all",), verbose=False)
    assert report.env["qdq"] and all(ln.source.startswith("digits") for ln in report.lines)
    assert report.ok == all(100 * ln.top1 >= 95.0 for ln in report.lines)
    strict = q.check(qdq, q.load(runs["fan"]), batches=(1, 64), opt_levels=("all",), verbose=False, qdq_top1=100.1)
    assert not strict.ok and "top1 < 100.1%" in strict.lines[0].reason


def _readme_block(lang: str, after: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"```{lang}\n", text.index(after)) + len(lang) + 4
    return text[start:text.index("```", start)]


@pytest.mark.slow  # a short training, a raw export (subprocess) and the README's client code
def test_readme_deploy_snippet_runs_verbatim_on_a_digits_demo_model(tmp_path):
    from quadexport.training.loop import TrainConfig, train

    run = tmp_path / "reports" / "digits-demo" / "runs" / "cnn-fan"  # the path the README's command uses
    metrics = train(TrainConfig(model="cnn", neuron="fan", width=8, dataset="digits", epochs=2, out=str(run)),
                    progress=False, plot=False)
    command = _readme_block("bash", "On the demo model").strip().split()
    assert command[:2] == ["quadexport", "export"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "quadexport", *command[1:]], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    snippet = _readme_block("python", "On the demo model")
    r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"test accuracy {100 * metrics['test_acc']:.2f}%"
