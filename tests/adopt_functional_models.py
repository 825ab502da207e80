"""Quadratic networks in the *functional* and *transposed* styles of public research code (issue #30), for the adopt
tests, the ``quadexport adopt tests/adopt_functional_models.py:BUILDER`` CLI tests and ``tools/adopt_codebases.py``.
The project's own modules, written after the patterns described in /work/shared/notes/foreign-quadratic-forms.md
(nothing copied). This file imports only torch and quadexport, so the CLI can run it alone.

Builders (``INPUT_SHAPES`` gives each one's example input shape, ``EXPECTED`` the neurons adopt must find):

- ``qcnn1d``: the bearing-fault QCNN style: a layer class holding six raw ``nn.Parameter`` s (``weight_r/g/b``,
  ``bias_r/g/b``, ReLinear init) whose forward calls ``F.conv1d`` three times (stride and padding on the layer,
  as keywords in one layer, ``x ** 2`` / ``x * x``); six of them with BatchNorm, ReLU and max-pooling outside; one
  layer keeps its weights in an ``nn.ParameterList``.
- ``qmlp``: the "one neuron saved" quadratic MLP: ``torch.matmul(x, W_r.t()) + b_r`` (weights ``[out, in]``) and
  ``x @ W`` (a weight stored ``[in, out]``), two neurons.
- ``qunet``: the "one neuron saved" quadratic U-Net, small: ``F.conv2d`` neurons, max-pool down, nearest up, a skip.
- ``qres_mlp`` / ``qres_pinn``: QRes (``act(h1 * h2 + h1)``, both ``F.linear`` with biases); ``qres_pinn`` takes
  ``forward(x, t)`` and concatenates, ``qres_mlp`` is the same network on one tensor.
- ``qae``: the low-dose-CT quadratic autoencoder: five ``nn.Conv2d`` neurons down and five
  ``nn.ConvTranspose2d`` neurons up (``r·g + b(x²)``), residual adds, ReLU; inputs in [0, 1].
- ``quadranet``: QuadraNet's depthwise quadratic mixer ``dwa(x) * dwb(x) + dwc(x)`` with an NHWC ``nn.Linear`` MLP.
- ``quadralib_types``: QuadraLib's types 2, 3 (``y * y`` of one conv), 4 and 1 (``nn.Bilinear``, left alone).
- ``qx_heads``: a model of quadexport's own layers (``QuadConv2d``, ``QuadLinear``) and nothing else to adopt.
- ``qx_mixed``: quadexport layers plus one inline ``F.conv2d`` neuron.

Helpers: :func:`randomize` (every parameter off its ReLinear init, BN statistics from one batch), and one real
checkpoint layout per style (:data:`CHECKPOINT_LAYOUTS`, :func:`save_checkpoint`).
"""

from __future__ import annotations

import argparse
import math
import torch
import torch.nn.functional as F
from torch import nn

import quadexport as q


# ------------------------------------------------------------------------------------- functional conv neurons
class QConv1dP(nn.Module):
    """Bearing-fault QCNN layer: six raw parameters, three ``F.conv1d`` calls, ``r * g + b(x ** 2)``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, kw: bool = False) -> None:
        super().__init__()
        self.stride, self.padding, self.kw = stride, padding, kw
        bound = 1 / math.sqrt(cin * k)
        self.weight_r = nn.Parameter(torch.empty(cout, cin, k).uniform_(-bound, bound))
        self.weight_g = nn.Parameter(torch.zeros(cout, cin, k))
        self.weight_b = nn.Parameter(torch.zeros(cout, cin, k))
        self.bias_r = nn.Parameter(torch.zeros(cout))
        self.bias_g = nn.Parameter(torch.ones(cout))
        self.bias_b = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kw:  # geometry as keywords, the square as x * x
            r = F.conv1d(x, self.weight_r, self.bias_r, stride=self.stride, padding=self.padding)
            g = F.conv1d(x, self.weight_g, self.bias_g, stride=self.stride, padding=self.padding)
            return F.conv1d(x * x, self.weight_b, self.bias_b, stride=self.stride, padding=self.padding) + r * g
        return (F.conv1d(x, self.weight_r, self.bias_r, self.stride, self.padding)
                * F.conv1d(x, self.weight_g, self.bias_g, self.stride, self.padding)
                + F.conv1d(x ** 2, self.weight_b, self.bias_b, self.stride, self.padding))


class QConv1dList(nn.Module):
    """The same neuron with its weights in an ``nn.ParameterList`` ``[r, g, b]`` and no biases."""

    def __init__(self, cin: int, cout: int, k: int, padding: int = 0) -> None:
        super().__init__()
        self.padding = padding
        bound = 1 / math.sqrt(cin * k)
        self.w = nn.ParameterList([nn.Parameter(torch.empty(cout, cin, k).uniform_(-bound, bound)),
                                   nn.Parameter(torch.zeros(cout, cin, k)), nn.Parameter(torch.zeros(cout, cin, k))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.conv1d(x, self.w[0], padding=self.padding) * F.conv1d(x, self.w[1], padding=self.padding)
                + F.conv1d(x.pow(2), self.w[2], padding=self.padding))


class QCNN1d(nn.Module):
    """Six functional quadratic conv layers (the first wide and strided, as bearing-fault nets read raw vibration)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        widths = [16, 16, 32, 32, 64]
        self.q1 = QConv1dP(in_channels, widths[0], 16, stride=4, padding=6)
        self.bn1 = nn.BatchNorm1d(widths[0])
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:] + [64])):
            layers += [QConv1dList(a, b, 3, padding=1) if i == 2 else QConv1dP(a, b, 3, padding=1, kw=i % 2 == 1),
                       nn.BatchNorm1d(b), nn.ReLU(), nn.MaxPool1d(2) if i < 3 else nn.Identity()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool1d(F.relu(self.bn1(self.q1(x))), 2)
        x = self.features(x)
        return self.fc(F.adaptive_avg_pool1d(x, 1).flatten(1))


def qcnn1d(num_classes: int = 10, in_channels: int = 1) -> QCNN1d:
    return QCNN1d(num_classes, in_channels)


# ------------------------------------------------------------------------------------- matmul / F.linear neurons
class QLinearMM(nn.Module):
    """Quadratic MLP layer with ``torch.matmul``: weights ``[out, in]`` used transposed, or ``[in, out]`` used as they
    are (``stored_in_out``)."""

    def __init__(self, n_in: int, n_out: int, stored_in_out: bool = False) -> None:
        super().__init__()
        shape = (n_in, n_out) if stored_in_out else (n_out, n_in)
        self.stored_in_out = stored_in_out
        self.weight_r = nn.Parameter(torch.randn(shape) / math.sqrt(n_in))
        self.weight_g = nn.Parameter(torch.zeros(shape))
        self.weight_b = nn.Parameter(torch.zeros(shape))
        self.bias_r, self.bias_g, self.bias_b = (nn.Parameter(torch.full((n_out,), v)) for v in (0.0, 1.0, 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stored_in_out:
            return (x @ self.weight_r + self.bias_r) * (x @ self.weight_g + self.bias_g) + (
                torch.matmul(x * x, self.weight_b) + self.bias_b)
        return ((torch.matmul(x, self.weight_r.t()) + self.bias_r) * (torch.matmul(x, self.weight_g.T) + self.bias_g)
                + torch.matmul(x ** 2, self.weight_b.t()) + self.bias_b)


class QMLP(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, in_features: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.l1 = QLinearMM(in_channels * in_features, hidden)
        self.l2 = QLinearMM(hidden, hidden, stored_in_out=True)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.l1(torch.flatten(x, 1)))
        return self.out(torch.relu(self.l2(h)))


def qmlp(num_classes: int = 10, in_channels: int = 1) -> QMLP:
    return QMLP(num_classes, in_channels)


class QResLayer(nn.Module):
    """QRes: ``act(h1 * h2 + h1)`` with ``h1 = F.linear(x, W1, b1)``, ``h2 = F.linear(x, W2, b2)``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.W1 = nn.Parameter(torch.randn(n_out, n_in) * math.sqrt(2 / (n_in + n_out)))
        self.W2 = nn.Parameter(torch.randn(n_out, n_in) * math.sqrt(2 / (n_in + n_out)))
        self.b1, self.b2 = nn.Parameter(torch.zeros(n_out)), nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = F.linear(x, self.W1, self.b1)
        return torch.tanh(h1 * F.linear(x, self.W2, self.b2) + h1)


class QResMLP(nn.Module):
    """Four QRes layers and a plain linear output (a PINN's ``u(x, t)`` on one concatenated tensor)."""

    def __init__(self, in_dim: int = 2, hidden: int = 32, out_dim: int = 1, layers: int = 4) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        self.blocks = nn.ModuleList(QResLayer(a, b) for a, b in zip(dims, dims[1:]))
        self.last = nn.Linear(hidden, out_dim)

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            xt = b(xt)
        return self.last(xt)


class QResPINN(QResMLP):
    """The PINN form: ``forward(x, t)``, concatenated."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([x, t], dim=1))


def qres_mlp(in_dim: int = 2) -> QResMLP:
    return QResMLP(in_dim)


def qres_pinn() -> QResPINN:
    return QResPINN(2)


# ------------------------------------------------------------------------------------- functional U-Net
class QConv2dP(nn.Module):
    """A quadratic U-Net's conv: ``F.conv2d`` on raw parameters, padding 1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(cin * 9)
        self.weight_r = nn.Parameter(torch.empty(cout, cin, 3, 3).uniform_(-bound, bound))
        self.weight_g = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.weight_b = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.bias_r, self.bias_g, self.bias_b = (nn.Parameter(torch.full((cout,), v)) for v in (0.0, 1.0, 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.conv2d(x, self.weight_r, self.bias_r, padding=1)
        g = F.conv2d(x, self.weight_g, self.bias_g, padding=1)
        return r * g + F.conv2d(torch.square(x), self.weight_b, self.bias_b, padding=1)


class QUNet(nn.Module):
    """Two levels, two quadratic convs per level, a skip; a 1x1 plain head."""

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 8) -> None:
        super().__init__()
        w = width
        self.d1 = nn.ModuleList([QConv2dP(in_channels, w), QConv2dP(w, w)])
        self.d2 = nn.ModuleList([QConv2dP(w, 2 * w), QConv2dP(2 * w, 2 * w)])
        self.u1 = nn.ModuleList([QConv2dP(3 * w, w), QConv2dP(w, w)])
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in (w, w, 2 * w, 2 * w, w, w))
        self.head = nn.Conv2d(w, classes, 1)

    def _two(self, convs: nn.ModuleList, x: torch.Tensor, i: int) -> torch.Tensor:
        for j, c in enumerate(convs):
            x = F.relu(self.bns[i + j](c(x)))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._two(self.d1, x, 0)
        b = self._two(self.d2, F.max_pool2d(a, 2), 2)
        u = F.interpolate(b, scale_factor=2.0, mode="nearest")
        return self.head(self._two(self.u1, torch.cat([a, u], 1), 4))


def qunet(in_channels: int = 1, classes: int = 2) -> QUNet:
    return QUNet(in_channels, classes)


# ------------------------------------------------------------------------------------- quadratic autoencoder
class QAE(nn.Module):
    """Low-dose-CT quadratic autoencoder (RED-CNN layout): five conv neurons down, five transposed-conv neurons up,
    each ``r(x) * g(x) + b(x * x)`` of three plain layers, residual adds every other level, ReLU."""

    def __init__(self, in_channels: int = 1, width: int = 8, k: int = 3) -> None:
        super().__init__()
        chans = [in_channels] + [width] * 5
        for i in range(5):
            for role in "rgb":
                setattr(self, f"conv{i + 1}_{role}", nn.Conv2d(chans[i], chans[i + 1], k))
        back = chans[::-1]
        for i in range(5):
            for role in "rgb":
                setattr(self, f"tconv{i + 1}_{role}", nn.ConvTranspose2d(back[i], back[i + 1], k))
        for name, m in self.named_modules():  # ReLinear init: g weight 0 bias 1, b weight 0 bias 0
            if name.endswith(("_g", "_b")):
                nn.init.zeros_(m.weight)
                nn.init.constant_(m.bias, 1.0 if name.endswith("_g") else 0.0)

    def _q(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        r, g, b = (getattr(self, f"{prefix}_{role}") for role in "rgb")
        return r(x) * g(x) + b(x * x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res1 = x
        out = F.relu(self._q("conv1", x))
        out = F.relu(self._q("conv2", out))
        res2 = out
        out = F.relu(self._q("conv3", out))
        out = F.relu(self._q("conv4", out))
        res3 = out
        out = F.relu(self._q("conv5", out))
        out = self._q("tconv1", out) + res3
        out = self._q("tconv2", F.relu(out))
        out = self._q("tconv3", F.relu(out)) + res2
        out = self._q("tconv4", F.relu(out))
        out = self._q("tconv5", F.relu(out)) + res1
        return F.relu(out)


def qae(in_channels: int = 1) -> QAE:
    return QAE(in_channels)


# ------------------------------------------------------------------------------------- QuadraNet (ConvNeXt base)
class QuadraBlock(nn.Module):
    """QuadraNet's block in ConvNeXt's code base: a depthwise quadratic mixer ``dwa(x) * dwb(x) + dwc(x)`` (three
    7x7 depthwise convs), then channels-last LayerNorm and a plain ``nn.Linear`` MLP on NHWC, a residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwa, self.dwb, self.dwc = (nn.Conv2d(dim, dim, 7, padding=3, groups=dim) for _ in range(3))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwa(x) * self.dwb(x) + self.dwc(x)
        y = self.norm(y.permute(0, 2, 3, 1))
        y = self.pw2(F.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        return x + y


class QuadraNetTiny(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, dim, 2, 2)
        self.blocks = nn.Sequential(QuadraBlock(dim), QuadraBlock(dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def quadranet(num_classes: int = 10, in_channels: int = 3) -> QuadraNetTiny:
    return QuadraNetTiny(num_classes, in_channels)


# ------------------------------------------------------------------------------------- QuadraLib's four types
class QuadraLibTypes(nn.Module):
    """QuadraLib's other neuron types in one net: type 2 ``conv(x * x)``, type 3 ``y = conv(x); y * y`` (the square
    of one map), type 4 ``torch.mul(conv1(x), conv2(x))`` and type 1, an ``nn.Bilinear`` (a full quadratic form)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.t2 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.t3 = nn.Conv2d(8, 8, 3, padding=1)
        self.t4a, self.t4b = nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)
        self.t1 = nn.Bilinear(8, 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.t2(x * x))
        y = self.t3(x)
        x = F.relu(y * y)
        x = torch.mul(self.t4a(x), self.t4b(x)).mean((2, 3))
        return self.t1(x, x)


def quadralib_types(num_classes: int = 10, in_channels: int = 1) -> QuadraLibTypes:
    return QuadraLibTypes(num_classes, in_channels)


# ------------------------------------------------------------------------------------- quadexport's own layers
class QxHeads(nn.Module):
    """A user's model built from quadexport layers: two quadratic convs, a quadratic linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, inline: bool = False) -> None:
        super().__init__()
        self.c1 = q.QuadConv2d(in_channels, 8, 3, padding=1)
        self.c2 = q.QuadConv2d(8, 8, 3, stride=2, padding=1, neuron="t4")
        self.bn = nn.BatchNorm2d(8)
        self.head = q.QuadLinear(8, num_classes, neuron="qres")
        self.inline = QConv2dP(8, 8) if inline else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.c2(F.relu(self.c1(x)))))
        if self.inline is not None:
            x = F.relu(self.inline(x))
        return self.head(x.mean((2, 3)))


def qx_heads(num_classes: int = 10, in_channels: int = 1) -> QxHeads:
    return QxHeads(num_classes, in_channels)


def qx_mixed(num_classes: int = 10, in_channels: int = 1) -> QxHeads:
    return QxHeads(num_classes, in_channels, inline=True)


# ------------------------------------------------------------------------------------- tables, helpers
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "qcnn1d": (1, 256), "qmlp": (1, 8, 8), "qunet": (1, 16, 16), "qres_mlp": (2,), "qae": (1, 16, 16),
    "qx_heads": (1, 12, 12), "qx_mixed": (1, 12, 12), "quadranet": (3, 16, 16),
    "quadralib_types": (1, 12, 12),
}
"""Builder -> one sample's shape (``qres_pinn`` takes two ``(1,)`` tensors)."""

EXPECTED: dict[str, dict[str, int]] = {
    "qcnn1d": {"fan": 6}, "qmlp": {"fan": 2}, "qunet": {"fan": 6}, "qres_mlp": {"qres": 4}, "qae": {"fan": 10},
    "qx_heads": {}, "qx_mixed": {"fan": 1}, "quadranet": {"quadralib": 2},
    "quadralib_types": {"t2": 1, "t4": 2},
}
"""Builder -> neuron type -> neurons adopt rewrites."""

UNIT_RANGE = {"qae"}
"""Builders fed inputs in [0, 1] (CT slices); the others N(0, 1)."""


def example(name: str, n: int = 4, seed: int = 1) -> torch.Tensor:
    """A batch for builder ``name``: uniform [0, 1] for :data:`UNIT_RANGE`, N(0, 1) otherwise."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, *INPUT_SHAPES[name])
    return torch.rand(shape, generator=g) if name in UNIT_RANGE else torch.randn(shape, generator=g)


@torch.no_grad()
def randomize(model: nn.Module, x: torch.Tensor, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Every parameter off its ReLinear init (weights ``+ scale·N(0,1)/√fan_in``, biases ``+ scale·N(0,1)``), every
    BatchNorm's running statistics from the batch ``x`` and a random affine; eval mode."""
    g = torch.Generator().manual_seed(seed)
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters()}
    for p in model.parameters():
        if id(p) not in bn_params:
            fan = p[0].numel() if p.dim() > 1 else 1
            p.add_(scale / fan ** 0.5 * torch.randn(p.shape, generator=g))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(x)
    for m in bns:
        m.momentum = 0.1
        m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """``BUILDER()`` with seeded init, randomized on a batch of 16 of its inputs."""
    torch.manual_seed(seed)
    return randomize(globals()[name](), example(name, 16, seed=seed + 100), seed=seed)


CHECKPOINT_LAYOUTS = {"qcnn1d": "bare", "qmlp": "model+optimizer+args", "qunet": "model+optimizer+args",
                      "qres_mlp": "model_state_dict", "qae": "dataparallel", "qx_heads": "net",
                      "quadranet": "model+optimizer+args", "quadralib_types": "net"}
"""One real layout per style: the bearing-fault QCNN saves a bare ``state_dict`` (``checkpoint.pth``); the
quadratic-efficiency scripts ``{'model', 'optimizer', 'args'}``; PINN code ``{'epoch', 'model_state_dict',
'optimizer_state_dict', 'loss'}``; the CT autoencoder a ``DataParallel`` state dict (``module.`` keys), bare."""


def save_checkpoint(name: str, model: nn.Module, path) -> None:
    """Save ``model`` in the layout :data:`CHECKPOINT_LAYOUTS` gives builder ``name``."""
    sd = model.state_dict()
    layout = CHECKPOINT_LAYOUTS[name]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3).state_dict()
    if layout == "bare":
        obj = sd
    elif layout == "model+optimizer+args":
        obj = {"model": sd, "optimizer": opt, "args": argparse.Namespace(lr=1e-3, epochs=100, hidden=32)}
    elif layout == "model_state_dict":
        obj = {"epoch": 5000, "model_state_dict": sd, "optimizer_state_dict": opt, "loss": 1.5e-4}
    elif layout == "dataparallel":
        obj = {"module." + k: v for k, v in sd.items()}
    else:
        obj = {"net": sd, "acc": 91.2, "epoch": 199}
    torch.save(obj, path)

