"""Model inputs through the API (issue #30 items 3, 4, 7): several-input models (``forward(x, t)``) adopt, export and
check with a tuple ``example_input`` or one shape per input; ``input_range`` draws the random inputs; inputs a model
does not take are one-line ``UsageError`` s naming the layer. The CLI path is in ``test_inputs_cli.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import input_models  # noqa: E402  (research-style models of the project's own writing)

import quadexport as q  # noqa: E402
from quadexport.data.inputs import ModelInputs, parse_ranges, resolve  # noqa: E402
from quadexport.errors import UsageError  # noqa: E402


def _pinn() -> torch.nn.Module:
    torch.manual_seed(0)
    return input_models.qres_pinn().eval()


def test_resolve_names_shapes_and_ranges():
    pinn = _pinn()
    ins = resolve(pinn, input_shape=[(1,), (1,)], input_range=(0, 1))
    assert ins.names == ["x", "t"] and ins.shapes == [(1,), (1,)] and ins.ranges == [(0.0, 1.0)] * 2
    x, t = ins.example(64)
    assert x.shape == (64, 1) and float(x.min()) >= 0 and float(x.max()) <= 1 and not torch.equal(x, t)
    assert ins.meta() == {"input_shape": [1], "inputs": [{"name": "x", "shape": [1]}, {"name": "t", "shape": [1]}],
                          "input_range": [[0.0, 1.0], [0.0, 1.0]]}
    one = resolve(input_models.log_autoencoder(), input_shape=(1, 8, 8))
    assert one.names == ["input"] and one.meta() == {"input_shape": [1, 8, 8]}  # one input: as it always was
    # the record is read back: a model carrying a run's meta resolves to the same specs
    pinn.quadexport_meta = ins.meta()
    assert resolve(pinn) == ins
    assert parse_ranges([(0, 1), (-1, 1)], 2) == [(0.0, 1.0), (-1.0, 1.0)]
    for bad in ([(0, 1)] * 3, (1, 0), (0, float("inf"))):
        with pytest.raises(UsageError):
            parse_ranges(bad, 2)


def test_one_input_example_is_unchanged():
    """One input and no range: the same random batch as before (seed 0, N(0, 1), batch 2)."""
    ins = resolve(input_models.log_autoencoder(), input_shape=(1, 8, 8))
    (x,) = ins.example(2)
    assert torch.equal(x, torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0)))


def test_adopt_tuple_example_and_shapes(tmp_path):
    """A tuple example_input (a bare AttributeError before) and one shape per input both adopt every qres neuron
    exactly; MACs count both inputs."""
    pinn = _pinn()
    x, t = torch.rand(8, 1), torch.rand(8, 1)
    a, rep = q.adopt(pinn, example_input=(x, t), return_report=True)
    b, rep2 = q.adopt(pinn, input_shape=[(1,), (1,)], return_report=True)
    assert [n.type for n in rep.neurons] == ["qres"] * 3 and rep.max_rel_diff == 0.0
    assert rep2.macs_before == rep2.macs_after > 0
    assert rep.to_dict()["inputs"] == [{"name": "x", "shape": [1]}, {"name": "t", "shape": [1]}]
    with torch.no_grad():
        assert torch.equal(a(x, t), pinn(x, t)) and torch.equal(b(x, t), pinn(x, t))


def test_export_several_inputs_named_after_forward(tmp_path):
    """Two graph inputs named x and t (shared dynamic batch), parity in plain onnxruntime, the inputs recorded in
    the metadata; a one-input model keeps the name "input" and no new metadata."""
    a = q.adopt(_pinn(), input_shape=[(1,), (1,)])
    path = q.export(a, tmp_path / "pinn.onnx", input_shape=[(1,), (1,)])
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["x", "t"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert "x" in props["quadexport.inputs"] and "t" in props["quadexport.inputs"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x, t = rng.random((5, 1), dtype=np.float32), rng.random((5, 1), dtype=np.float32)
    with torch.no_grad():
        ref = a(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    got = sess.run(None, {"x": x, "t": t})[0]
    assert float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) <= 1e-5
    report = q.check(path, a, batches=(1, 3), opt_levels=("all",), verbose=False)
    assert report.ok and report.lines
    ae = q.adopt(input_models.log_autoencoder(), input_shape=(1, 8, 8), input_range=(0, 1))
    one = onnx.load(str(q.export(ae, tmp_path / "ae.onnx", input_shape=(1, 8, 8), input_range=(0, 1))))
    assert [i.name for i in one.graph.input] == ["input"]
    assert "quadexport.inputs" not in {p.key for p in one.metadata_props}


def test_wrong_inputs_are_one_line_usage_errors(tmp_path):
    pinn = _pinn()
    with pytest.raises(UsageError, match=r"forward takes 2 input\(s\) \(x, t\) but 1"):
        q.adopt(pinn, input_shape=(1,))
    with pytest.raises(UsageError, match=r"layer w1\.0 \(Linear\) expects 2 input feature"):
        q.adopt(pinn, input_shape=[(1,), (2,)])
    with pytest.raises(UsageError, match=r"layer enc\.conv_r \(Conv2d\) expects 1 input channel\(s\), got 3"):
        q.adopt(input_models.log_autoencoder(), input_shape=(3, 8, 8))
    with pytest.raises(UsageError, match="expects 1 input channel"):
        q.export(input_models.log_autoencoder(), tmp_path / "x.onnx", input_shape=(3, 8, 8))
    with pytest.raises(UsageError, match="torch.export cannot trace UntraceableNet .*data-dependent"):
        q.export(input_models.untraceable_net(), tmp_path / "u.onnx", input_shape=(4,))
    assert not (tmp_path / "u.onnx").exists()
    with pytest.raises(UsageError, match="one input"):
        q.export(q.adopt(pinn, input_shape=[(1,), (1,)]), tmp_path / "p.onnx", fp16=True, input_shape=[(1,), (1,)])


def test_model_inputs_numpy_draws_in_range():
    ins = resolve(_pinn(), input_shape=[(3,), (2,)], input_range=[(2, 3), None])
    assert isinstance(ins, ModelInputs)
    x, t = ins.numpy(1000, np.random.default_rng(0))
    assert x.dtype == np.float32 and 2 <= x.min() and x.max() <= 3 and t.shape == (1000, 2) and t.min() < 0


def test_functional_qres_pinn_adopts_and_exports_with_two_inputs(tmp_path):
    """The QRes PINN written on F.linear with raw Parameters (the QRes PINN code's style, issue #30 "done when"):
    every neuron adopted, two ONNX inputs x and t, parity <= 1e-5 in plain onnxruntime against the source."""
    import adopt_functional_models as fm

    torch.manual_seed(1)
    src = fm.qres_pinn().eval()
    a, rep = q.adopt(src, input_shape=[(1,), (1,)], return_report=True)
    assert [n.type for n in rep.neurons] == ["qres"] * 4 and rep.max_rel_diff == 0.0
    path = q.export(a, tmp_path / "fpinn.onnx", mode="fused", input_shape=[(1,), (1,)])
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["x", "t"]
    assert sum(n.domain == "quadexport" for n in proto.graph.node) == 4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # the function bodies
    rng = np.random.default_rng(2)
    x, t = rng.uniform(-1, 1, (17, 1)).astype(np.float32), rng.uniform(0, 1, (17, 1)).astype(np.float32)
    with torch.no_grad():
        ref = src(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    got = sess.run(None, {"x": x, "t": t})[0]
    assert float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) <= 1e-5
