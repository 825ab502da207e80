"""Model zoo: names, shapes, parameter and MAC counts."""

import pytest
import torch

import quadexport as q


def test_list_models():
    names = q.list_models()
    for n in ["resnet8", "resnet14", "resnet20", "resnet32", "resnet56", "resnet110", "mlp", "cnn"]:
        assert n in names
    with pytest.raises(ValueError, match="unknown model"):
        q.create_model("resnet21")


@pytest.mark.parametrize("name", ["resnet8", "mlp", "cnn"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_forward_shapes(name, shape):
    m = q.create_model(name, "fan", num_classes=7, in_channels=shape[0], input_size=shape[1:])
    assert m(torch.randn(2, *shape)).shape == (2, 7)


def test_resnet20_counts_match_published_cifar_numbers():
    shape = (3, 32, 32)
    relu, quad = q.create_model("resnet20", "relu", in_channels=3), q.create_model("resnet20", "fan", in_channels=3)
    # akamaster ResNet20: 0.27M params, 40.6M MACs (convs); QResNet20 ≈ 0.81M / 120.8M (3 convs per block conv)
    assert abs(q.count_params(relu) - 0.27e6) < 0.01e6
    assert abs(q.count_macs(relu, shape) - 40.6e6) < 0.1e6
    assert abs(q.count_macs(quad, shape) - 120.8e6) < 0.1e6
    ratio = q.count_macs(quad, shape) / q.count_macs(relu, shape)
    assert 2.9 < ratio < 3.0


def test_compact_costs_two_branches():
    shape = (1, 28, 28)
    relu = q.count_macs(q.create_model("resnet8", "relu"), shape)
    compact = q.count_macs(q.create_model("resnet8", "compact"), shape)
    fan = q.count_macs(q.create_model("resnet8", "fan"), shape)
    assert relu < compact < fan


@pytest.mark.parametrize("name", ["resnet8", "mlp", "cnn"])
@pytest.mark.parametrize("neuron", ["fan", "relu"])
def test_models_describe_their_channel_groups(name, neuron):
    from torch import nn

    from quadexport.layers import QuadLayer

    m = q.create_model(name, neuron, in_channels=1, input_size=8)
    st = m.channel_groups()
    mods = dict(m.named_modules())
    seen = set()
    for g in st.groups:
        assert g.producers, g.name
        for layer, bn in g.producers:
            w = mods[layer].weight
            assert w.shape[0] == g.channels, (g.name, layer)
            assert bn is None or mods[bn].num_features == g.channels
            assert layer not in seen
            seen.add(layer)
        for layer in g.consumers:
            assert mods[layer].weight.shape[1] == g.channels, (g.name, layer)
    # every hidden conv/linear of the model produces exactly one group (the head produces none)
    layers = {n for n, x in mods.items() if isinstance(x, (nn.Conv2d, nn.Linear, QuadLayer))
              and not n.endswith((".r", ".g", ".b"))}
    assert seen == layers - {"fc", "head"}
    for sc in st.shortcuts:
        assert sc.out_channels - sc.in_channels == 2 * sc.pad and sc.stride == 2
    assert len(st.shortcuts) == (2 if name == "resnet8" else 0)
