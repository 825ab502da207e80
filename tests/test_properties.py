"""Property-based tests (hypothesis): random quadratic layer configurations survive export → onnxruntime parity."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import quadexport as q
from quadexport.exporter import export, make_session

NEURONS = ["fan", "compact", "t2", "t4", "quadralib", "qres"]  # full-branch types (cheap variants need 'same' geometry)


def _perturb(model: nn.Module, std: float = 0.05) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".g." in f".{name}" or ".b." in f".{name}" or ".l." in f".{name}" or name.startswith(("g.", "b.", "l.")):
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


@st.composite
def conv_configs(draw):
    dims = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 3, 5]))
    dilation = draw(st.sampled_from([1, 2]))
    same = draw(st.booleans())
    stride = 1 if same else draw(st.sampled_from([1, 2]))
    padding = "same" if same else draw(st.integers(0, 2))
    size = draw(st.integers(dilation * (k - 1) + 1 + 2, 12))
    return dict(dims=dims, cin=cin, cout=cout, k=k, stride=stride, padding=padding, dilation=dilation,
                groups=groups, bias=draw(st.booleans()), neuron=draw(st.sampled_from(NEURONS)), size=size,
                batch=draw(st.sampled_from([1, 3, 5])))


def _check(model: nn.Module, x: torch.Tensor, path, mode: str = "decomposed") -> None:
    export(model, path, mode=mode, example_input=x, fold_bn=False, check_model=False)
    sess = make_session(path, kernel_library="never")
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.isfinite(got).all() and got.shape == ref.shape
    rel = np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12)
    assert rel <= 1e-5, rel


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=conv_configs(), mode=st.sampled_from(["decomposed", "function"]))
def test_random_conv_layers_export_with_parity(cfg, mode, tmp_path):
    cls = q.QuadConv1d if cfg["dims"] == 1 else q.QuadConv2d
    layer = cls(cfg["cin"], cfg["cout"], cfg["k"], stride=cfg["stride"], padding=cfg["padding"],
                dilation=cfg["dilation"], groups=cfg["groups"], bias=cfg["bias"], neuron=cfg["neuron"])
    model = _perturb(nn.Sequential(layer, nn.ReLU())).eval()
    shape = (cfg["batch"], cfg["cin"]) + (cfg["size"],) * cfg["dims"]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    _check(model, x, tmp_path / "m.onnx", mode)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fin=st.integers(1, 16), fout=st.integers(1, 16), bias=st.booleans(), neuron=st.sampled_from(NEURONS),
       batch=st.sampled_from([1, 3, 5]), depth=st.integers(1, 3))
def test_random_dense_stacks_export_with_parity(fin, fout, bias, neuron, batch, depth, tmp_path):
    layers, width = [], fin
    for _ in range(depth):
        layers += [q.QuadLinear(width, fout, bias=bias, neuron=neuron), nn.ReLU()]
        width = fout
    model = _perturb(nn.Sequential(*layers)).eval()
    x = torch.randn(batch, fin, generator=torch.Generator().manual_seed(2))
    _check(model, x, tmp_path / "m.onnx")
