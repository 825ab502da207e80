"""``quadexport adopt`` as a user types it (issue #22 items 2, 3 and 6): the inline-style QResNet20 of the research
code, saved from a ``DataParallel`` model with its training arguments and numpy scalars, goes adopt -> export fused
(18 custom-domain nodes) -> check -> bench against its derived ReLU twin, each a ``python -m quadexport``
subprocess; the run then loads in a fresh process from another directory with the user's file gone. Plus the
checkpoint refusals through the CLI, one line each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import adopt_models  # noqa: E402  (research-style quadratic modules of the project's own writing)

SHAPE = (1, 16, 16)


def _cli(*args: str | Path, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "quadexport", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> SimpleNamespace:
    """A user's directory: their model file (not importable as ``adopt_models``) and a DataParallel checkpoint."""
    root = tmp_path_factory.mktemp("adopt-cli")
    d = root / "user"
    d.mkdir()
    shutil.copy(Path(adopt_models.__file__), d / "qmodels.py")
    model = adopt_models.build("qresnet20", input_shape=SHAPE)
    adopt_models.save_dataparallel_checkpoint(model, d / "model.th", with_args=True, numpy_scalars=True)
    x = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    torch.save({"x": x, "ref": ref}, root / "io.pt")
    return SimpleNamespace(root=root, dir=d, model=model, x=x, ref=ref)


@pytest.fixture(scope="module")
def run(user) -> Path:
    out = user.root / "runs" / "qresnet20"
    r = _cli("adopt", "qmodels.py:qresnet20", "--model-arg", "in_channels=1", "--weights", "model.th",
             "--input-shape", ",".join(map(str, SHAPE)), "--out", out, cwd=user.dir)
    stdout = _ok(r)
    assert "18" in stdout and "fan" in stdout, stdout  # the report: 18 fan neurons adopted
    return out


def test_run_dir_is_whole_and_records_the_source(run, user):
    files = {p.name for p in run.iterdir()}
    assert {"checkpoint.pt", "config.json", "metrics.json", "qmodels.py"} <= files
    cfg, metrics = json.loads((run / "config.json").read_text()), json.loads((run / "metrics.json").read_text())
    assert cfg["command"] == "adopt" and cfg["builder"] == "qresnet20" and cfg["model_args"] == {"in_channels": 1}
    assert (run / "qmodels.py").read_text() == (user.dir / "qmodels.py").read_text()
    import hashlib

    assert cfg["sha256"] == hashlib.sha256((run / "qmodels.py").read_bytes()).hexdigest()
    assert cfg["run_id"] == metrics["run_id"]
    ck = torch.load(run / "checkpoint.pt", weights_only=True)  # no code runs reading it
    assert ck["config"]["name"] == "adopted:qmodels.py:qresnet20"
    assert len(ck["config"]["adopt"]["neurons"]) == 18
    assert not any(p.name.startswith(".") for p in run.parent.iterdir()), "staging leftovers"


def test_fresh_process_from_elsewhere_without_the_users_file(run, user, tmp_path):
    """q.load rebuilds the model from the source kept in the run: the user's file and directory are not needed."""
    moved = tmp_path / "gone.py"
    shutil.move(user.dir / "qmodels.py", moved)
    try:
        probe = ("import sys, torch, quadexport as q\n"
                 "from quadexport.layers.quad import QuadLayer\n"
                 f"m = q.load({str(run)!r}); io = torch.load({str(user.root / 'io.pt')!r})\n"
                 "assert not any('qmodels' in p or 'user' in p for p in sys.path)\n"
                 "with torch.no_grad(): y = m(io['x'])\n"
                 "print(sum(isinstance(l, QuadLayer) for l in m.modules()), "
                 "float((y - io['ref']).abs().max() / io['ref'].abs().max()))\n")
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr
        n, err = r.stdout.split()
        assert int(n) == 18 and float(err) <= 1e-6
    finally:
        shutil.move(moved, user.dir / "qmodels.py")


def test_export_fused_check_and_bench_against_the_derived_twin(run, tmp_path):
    fused = tmp_path / "q-fused.onnx"
    _ok(_cli("export", run, fused, "--mode", "fused", "--no-check", "-q"))
    nodes = onnx.load(str(fused)).graph.node
    assert sum(1 for n in nodes if n.domain not in ("", "ai.onnx")) == 18
    out = _ok(_cli("check", fused, run, "--batch", "2", "--opt-level", "all"))
    assert "fail" not in out.lower(), out
    bench = tmp_path / "bench"
    _ok(_cli("bench", run, "--batch", "1", "--mode", "decomposed", "--no-torch-eager", "--warmup", "1",
             "--min-iters", "3", "--min-seconds", "0", "--opset", "17", "--out", bench, "--quiet"))
    rep = json.loads((bench / "bench.json").read_text())
    models = {m["role"]: m for m in rep["models"]}
    twin = models["twin"]
    assert "derived" in twin["note"] and twin["neuron"] == "relu"
    assert twin["macs"] < models["quadratic"]["macs"]
    assert any(r["role"] == "twin" and r["baseline"] == twin["id"] for r in rep["ratios"])
    decomposed = [p for p in bench.rglob("*.onnx") if "relu" not in p.name]  # the adopted run's decomposed file
    assert decomposed
    for f in decomposed:
        ops = {n.op_type for n in onnx.load(str(f)).graph.node}
        assert "Conv" in ops and not ops & {"BatchNormalization", "Pow"}, (f.name, ops)


def test_refusals_are_one_line(user, tmp_path, capsys):
    from quadexport.cli import main

    def error(*args: str | Path) -> str:
        assert main([*map(str, args), "-q"]) == 2
        lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("no --weights")]
        assert len(lines) == 1 and lines[0].startswith("quadexport adopt: error: "), lines
        return lines[0]

    # another pickled type: refused, naming it and --trust-checkpoint
    import fractions

    state = {"module." + k: v for k, v in user.model.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": fractions.Fraction(91, 1)}, tmp_path / "odd.th")
    base = ["adopt", user.dir / "qmodels.py:qresnet20", "--model-arg", "in_channels=1", "--input-shape", "1,16,16"]
    err = error(*base, "--weights", tmp_path / "odd.th", "--out", tmp_path / "a")
    assert "fractions.Fraction" in err and "--trust-checkpoint" in err
    # keys that do not fit: one line naming a few
    part = {k: v for k, v in state.items() if "layer3" not in k}
    part["module.extra.weight"] = torch.zeros(1)
    torch.save({"model": part}, tmp_path / "part.th")
    err = error(*base, "--weights", tmp_path / "part.th", "--out", tmp_path / "b")
    assert "missing" in err and "layer3.0.conv1r.weight" in err and "unexpected 1: extra.weight" in err
    # a builder option the builder does not take, a target without :BUILDER, a builder that is not there
    assert "width" in error("adopt", user.dir / "qmodels.py:qresnet20", "--model-arg", "width=3",
                            "--input-shape", "1,16,16", "--out", tmp_path / "c")
    assert "FILE.py:BUILDER" in error("adopt", user.dir / "qmodels.py", "--input-shape", "1,16,16",
                                      "--out", tmp_path / "d")
    assert "no function 'qresnet21'" in error("adopt", user.dir / "qmodels.py:qresnet21", "--input-shape",
                                              "1,16,16", "--out", tmp_path / "e")
    # a model without any quadratic neuron: nothing to adopt, nothing written
    assert "found no quadratic neuron" in error("adopt", user.dir / "qmodels.py:relu_factor_net",
                                                "--input-shape", "1,12,12", "--out", tmp_path / "f")
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "a refused adopt left a run dir behind"


def test_trusted_checkpoint_through_the_cli(user, tmp_path, capsys):
    """--trust-checkpoint loads a checkpoint pickling another type, and says what it did."""
    import fractions

    from quadexport.cli import main

    small = adopt_models.build("t4_net")
    state = {"module." + k: v for k, v in small.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": fractions.Fraction(91, 1)}, tmp_path / "odd.th")
    assert main(["adopt", str(user.dir / "qmodels.py:t4_net"), "--input-shape", "1,12,12",
                 "--weights", str(tmp_path / "odd.th"), "--trust-checkpoint", "--out", str(tmp_path / "run")]) == 0
    assert "arbitrary code" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_help_says_it_runs_the_users_code():
    r = _cli("adopt", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "RUNS YOUR CODE" in text and "ARBITRARY CODE" in text and "--trust-checkpoint" in text


def test_compress_channel_groups_of_an_adopted_qresnet_are_consistent():
    """The inline option-A shortcut (slice + F.pad over channels) joins streams of different widths in torch-pruning's
    graph; compress must not put a 32-channel producer in a 16-channel group (it did: a shape error in the rewrite)."""
    import quadexport as q
    from quadexport.compress.graph import discover

    model = adopt_models.build("qresnet20", input_shape=(1, 8, 8))
    gm = q.adopt(model, input_shape=(1, 8, 8))
    mods = dict(gm.named_modules())
    st = discover(gm, torch.randn(1, 1, 8, 8))
    assert st.groups
    for g in st.groups:
        for name, _bn in g.producers:
            assert mods[name].out_channels == g.channels, (g.name, name)
    assert any(not g.resolved and "changes the channel count" in g.reason for g in st.groups)


def test_dataset_accuracy_is_measured_and_recorded(user, tmp_path, capsys):
    """--dataset: the adopted run's test accuracy is measured on the dataset's test split and recorded (a Linear fan
    MLP trained a little on digits, saved as {'model_state_dict': ...})."""
    import quadexport as q
    from quadexport.cli import main
    from quadexport.data import load_dataset

    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = adopt_models.fan_mlp(num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(150):
        idx = torch.randint(0, len(ds.x_train), (64,))
        loss = torch.nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = int((model(ds.x_test).argmax(1) == ds.y_test).sum()) / len(ds.y_test)
    assert acc > 0.5
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, tmp_path / "mlp.pt")
    run = tmp_path / "mlp-run"
    assert main(["adopt", str(user.dir / "qmodels.py:fan_mlp"), "--weights", str(tmp_path / "mlp.pt"),
                 "--dataset", "digits", "--out", str(run), "-q"]) == 0
    assert "accuracy" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_acc"] == pytest.approx(acc, abs=1e-9)
    loaded = q.load(run)
    assert loaded.quadexport_meta["dataset"] == "digits" and loaded.quadexport_meta["preprocessing"]
    assert loaded.quadexport_meta["test_acc"] == metrics["test_acc"]
    assert loaded.quadexport_config["neuron"] == "fan"


def test_edited_source_in_the_checkpoint_is_refused(run, tmp_path):
    """The recorded model text must match its sha256 before it runs."""
    import quadexport as q
    from quadexport.runs.checkpoint import CheckpointError

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ck = torch.load(copy / "checkpoint.pt", weights_only=True)
    ck["config"]["source"]["text"] += "\nprint('edited')\n"
    torch.save(ck, copy / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        q.load(copy)


def test_quadratize_accepts_an_adopted_run(run, tmp_path):
    """quadratize RUN converts a plain layer the adopted model kept (its stem) and leaves the adopted neurons alone;
    the new run rebuilds from the user's source, the adopt spec and the quadratize spec, computing the same."""
    import quadexport as q
    from quadexport.cli import main
    from quadexport.layers.quad import QuadLayer

    assert main(["quadratize", str(run), "--out", str(tmp_path / "q"), "--include", "conv1", "-q"]) == 0
    a, b = q.load(run), q.load(tmp_path / "q")
    assert sum(isinstance(m, QuadLayer) for m in b.modules()) == 19
    assert isinstance(b.get_submodule("conv1"), QuadLayer)
    assert b.quadexport_config["adopt"] == a.quadexport_config["adopt"]
    x = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("builder, names", [("seg_net", ["output"]), ("two_heads", ["seg", "cls"])])
def test_non_classifier_adopt_export_dynamic_size_and_check(builder, names, tmp_path):
    """Issue #23 through adopt: a research-style segmentation net and a two-headed dict model (inline neurons) become
    run dirs that ``info`` describes, export with ``--dynamic-size`` (fused kernels; the export checks two sizes)
    under their own output names, pass ``check`` (CLI and API) and run at another H x W in onnxruntime."""
    import quadexport as q
    from quadexport.exporter.outputs import rebuild_outputs
    from quadexport.exporter.session import make_session

    d = tmp_path / "user"
    d.mkdir()
    shutil.copy(Path(adopt_models.__file__), d / "qmodels.py")
    model = adopt_models.build(builder, input_shape=(3, 16, 16))
    adopt_models.save_dataparallel_checkpoint(model, d / "model.th")
    run = tmp_path / "run"
    _ok(_cli("adopt", f"qmodels.py:{builder}", "--weights", "model.th", "--input-shape", "3,16,16", "--out", run,
             cwd=d))
    info = _ok(_cli("info", run))
    assert ("segmentation" if builder == "seg_net" else "multi-output") in info
    assert all(n in info for n in names)
    onnx_path = tmp_path / "m.onnx"
    _ok(_cli("export", run, onnx_path, "--dynamic-size", "--mode", "fused"))
    proto = onnx.load(str(onnx_path))
    assert [o.name for o in proto.graph.output] == names
    assert sum(n.domain not in ("", "ai.onnx") for n in proto.graph.node) == 3  # one kernel node per neuron
    _ok(_cli("check", onnx_path, run))
    loaded = q.load(run)
    assert q.check(onnx_path, loaded).ok
    x = torch.randn((2, 3, 24, 20), generator=torch.Generator().manual_seed(5))  # another H x W than exported at
    sess = make_session(onnx_path)  # onnxruntime with the kernel library registered
    got = rebuild_outputs(sess, sess.run(None, {sess.get_inputs()[0].name: x.numpy()}))
    with torch.no_grad():
        ref, src = loaded(x), model(x)
    ref, src, got = ({"output": v} if builder == "seg_net" else v for v in (ref, src, got))
    for n in ref:
        assert torch.equal(ref[n], src[n])  # the adopted run computes the user's model
        err = float((torch.as_tensor(got[n]) - ref[n]).norm() / ref[n].norm())
        assert err <= 1e-5, (n, err)
