"""Models for the architecture-agnostic compression tests (imported by tests/test_compress_graph.py and, to load a
compressed run in a fresh interpreter, by its subprocess): a quadratized torchvision ResNet-18 and
MobileNetV3-small (every ungrouped conv made a ``QuadConv2d``; a stand-in for ``quadexport.quadratize``), and a
user module with a residual add and a concatenation. Registered in the zoo under ``cgtest_*`` names so run dirs
rebuild them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quadexport._compat import import_torchvision
from quadexport.layers import QuadConv2d, QuadLayer
from quadexport.zoo.registry import _REGISTRY, register_model


def quadratize_convs(model: nn.Module, neuron: str) -> nn.Module:
    """Replace every ungrouped, bias-free ``nn.Conv2d`` but the stem by a ``QuadConv2d`` of the same configuration
    (r = the conv), as the zoo's QResNets keep their stem conventional (MobileNet's squeeze-excitation convs, which
    have biases, stay conventional too)."""
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    for name, m in list(model.named_modules()):
        for cname, c in list(m.named_children()):
            if type(c) is nn.Conv2d and c.groups == 1 and c is not stem and c.bias is None:
                q = QuadConv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                               c.groups, c.bias is not None, neuron=neuron)
                with torch.no_grad():
                    q.r.weight.copy_(c.weight)
                setattr(m, cname, q)
    return model


def _tv(arch: str, neuron: str, num_classes: int, in_channels: int) -> nn.Module:
    tv = import_torchvision()
    torch.manual_seed(0)
    m = getattr(tv.models, arch)(num_classes=num_classes)
    if arch == "resnet18":
        m.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    else:
        old = m.features[0][0]
        m.features[0][0] = nn.Conv2d(in_channels, old.out_channels, 3, 1, 1, bias=False)
    return m if neuron == "relu" else quadratize_convs(m, neuron)


class UserNet(nn.Module):
    """A user's own module: stem, a residual add, a two-branch concatenation, a head."""

    def __init__(self, neuron: str, num_classes: int, in_channels: int) -> None:
        super().__init__()

        def conv(i: int, o: int, k: int) -> nn.Module:
            if neuron == "relu":
                return nn.Conv2d(i, o, k, padding=k // 2, bias=False)
            return QuadConv2d(i, o, k, padding=k // 2, bias=False, neuron=neuron)

        self.stem, self.bn0 = conv(in_channels, 16, 3), nn.BatchNorm2d(16)
        self.res, self.bn1 = conv(16, 16, 3), nn.BatchNorm2d(16)
        self.left, self.bnl = conv(16, 16, 1), nn.BatchNorm2d(16)
        self.right, self.bnr = conv(16, 16, 3), nn.BatchNorm2d(16)
        self.mix, self.bn2 = conv(32, 32, 3), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn1(self.res(x)))
        x = torch.cat([F.relu(self.bnl(self.left(x))), F.relu(self.bnr(self.right(x)))], 1)
        x = F.relu(self.bn2(self.mix(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _register() -> None:
    if "cgtest_resnet18" in _REGISTRY:
        return
    for arch, key in (("resnet18", "cgtest_resnet18"), ("mobilenet_v3_small", "cgtest_mbv3s")):
        register_model(key, family=key, input_shape=(1, 8, 8))(
            lambda neuron="fan", num_classes=10, in_channels=1, input_size=(8, 8), _a=arch: _tv(_a, neuron,
                                                                                              num_classes,
                                                                                              in_channels))
    register_model("cgtest_user", family="cgtest_user", input_shape=(1, 8, 8))(
        lambda neuron="fan", num_classes=10, in_channels=1, input_size=(8, 8): UserNet(neuron, num_classes,
                                                                                       in_channels))


_register()


@torch.no_grad()
def give_quadratic_terms(model: nn.Module, x: torch.Tensor, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Quadratic terms of very different sizes per channel (some negligible, some large) and BN statistics from
    ``x`` and as many N(0, 1) inputs: like a ReLinear-trained model, some channels prune and some do not.

    The N(0, 1) half keeps the model well-conditioned on the random inputs ``quadexport check`` also runs: with
    statistics from 100 digits images alone, channels that are nearly constant on digits get BN scales of up to
    1/sqrt(eps), and even the ReLU MobileNetV3 read rel_l2 1.9e-5 on random inputs (3.6e-6 on digits) on an
    AVX-512 CPU, whatever the size of the quadratic terms."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, QuadLayer):
            c = mod.r.weight.shape[0]
            mag = torch.rand(c, generator=g) ** 4 * scale * float(mod.r.weight.std())  # relative to the linear weights
            for br in ("g", "b"):
                w = getattr(mod, br).weight
                w.add_(torch.randn(w.shape, generator=g) * mag.reshape((-1,) + (1,) * (w.dim() - 1)))
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = None
            mod.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.cat([x, torch.randn(x.shape, generator=g).to(x.dtype)]))
    return model.eval()
