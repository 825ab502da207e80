"""Models whose inputs are not one N(0, 1) image (issue #30 items 3, 4, 7), written as research code writes them,
for the several-input and input-range tests and the ``quadexport adopt tests/input_models.py:BUILDER`` CLI tests.

- ``qres_pinn``: a QRes physics-informed MLP (the QRes PINN code's style): ``forward(x, t)`` concatenates its two
  coordinates, every hidden layer is ``tanh(h1 * h2 + h1)`` with ``h1``/``h2`` two ``nn.Linear`` maps of the same
  input (the ``qres`` type), a plain linear read-out ``u(x, t)``.
- ``log_autoencoder``: a denoising autoencoder for images in [0, 1] that works in the log domain
  (``log(x + eps)``, as speckle/CT denoisers do): inline fan neurons ``conv_r(h) * conv_g(h) + conv_b(h.pow(2))``
  in the encoder and the decoder, a sigmoid back to [0, 1]. On N(0, 1) inputs its outputs are NaN.
- ``untraceable_net``: data-dependent control flow in ``forward`` (torch.fx cannot trace it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QResPINN(nn.Module):
    def __init__(self, hidden: int = 16, layers: int = 3) -> None:
        super().__init__()
        dims = [2] + [hidden] * layers
        self.w1 = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.w2 = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, t], dim=1)
        for l1, l2 in zip(self.w1, self.w2):
            h1 = l1(h)
            h = torch.tanh(h1 * l2(h) + h1)
        return self.out(h)


def qres_pinn(hidden: int = 16, layers: int = 3) -> QResPINN:
    return QResPINN(hidden, layers)


class FanBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_r = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv_g = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv_b = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv_r(h) * self.conv_g(h) + self.conv_b(h.pow(2))


class LogAutoencoder(nn.Module):
    def __init__(self, channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.enc = FanBlock(channels, width)
        self.dec = FanBlock(width, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.log(x + 1e-3)  # the log domain: defined on [0, 1] images, NaN below -1e-3
        h = F.relu(self.enc(h))
        h = F.interpolate(F.max_pool2d(h, 2), scale_factor=2.0, mode="nearest")
        return torch.sigmoid(self.dec(h))


def log_autoencoder(channels: int = 1, width: int = 8) -> LogAutoencoder:
    return LogAutoencoder(channels, width)


class UntraceableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return self.a(x) * self.b(x)
        return self.a(x)


def untraceable_net() -> UntraceableNet:
    return UntraceableNet()
