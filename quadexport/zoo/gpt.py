"""``gpt``: a small decoder-only byte-level language model whose feed-forward layers take a quadratic neuron.

Pre-norm blocks ``x + attn(ln(x))``, ``x + ffn(ln(x))``; causal self-attention written with plain matmuls, a
softmax and a sliced additive mask so that it exports to ONNX with a dynamic sequence length.

The feed-forward layer is ``fc2(act(fc1(x)))``:

- ``neuron="relu"`` (or ``"gelu"``): the classic layer, ``fc1`` an ``nn.Linear`` of width ``4 * d_model``.
- any registered quadratic type: ``fc1`` is a :class:`~quadexport.layers.QuadLinear` of that type and, by default,
  no activation follows it (the neuron is the non-linearity): ``neuron="t4"`` is then the bilinear layer
  ``W_2((W_1 x) * (W_3 x))`` of Shazeer, "GLU Variants Improve Transformer" (2020). ``act="relu"`` puts a ReLU
  after it (then a ReLinear-initialised model of the same width computes its ReLU twin).
- a quadratic model's width defaults to the one that gives it the ReLU model's parameter count (within 2 %; 170
  for ``t4``, 128 for ``fan`` at ``d_model=64``), so the defaults are the parameter-matched comparison; ``ffn_width=``
  overrides it (``ffn_width=256`` with ``neuron="relu"`` is a quadratic model's same-width ReLU twin).

Input: int64 token ids ``(batch, length)``, ``length <= context`` (``model.token_input``,
:mod:`quadexport.zoo.tokens`); output: next-token logits ``(batch, length, vocab_size)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from quadexport.errors import UsageError
from quadexport.layers.quad import QuadLinear
from quadexport.zoo.common import linear
from quadexport.zoo.registry import register_model
from quadexport.zoo.tokens import TokenInput

__all__ = ["GPT", "default_ffn_width", "ffn_params", "gpt"]

PLAIN = {"relu": nn.ReLU, "gelu": nn.GELU}
"""The plain (non-quadratic) feed-forward neurons: ``neuron=`` values that build ``nn.Linear`` + activation."""
ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "none": nn.Identity}


def ffn_params(neuron: str, d_model: int, width: int) -> int:
    """Parameters of one feed-forward layer (``fc1`` of ``neuron`` at ``width``, then ``fc2`` back to d_model)."""
    fc1 = nn.Linear(d_model, width) if neuron in PLAIN else QuadLinear(d_model, width, neuron=neuron)
    return sum(p.numel() for p in fc1.parameters()) + width * d_model + d_model


def default_ffn_width(neuron: str, d_model: int) -> int:
    """``4 * d_model`` for ReLU/GELU; for a quadratic type the width whose feed-forward layer has the parameter
    count nearest to the ReLU one (parameters are affine in the width: measured at widths 1 and 2)."""
    relu = ffn_params("relu", d_model, 4 * d_model)
    if neuron in PLAIN:
        return 4 * d_model
    p1, p2 = ffn_params(neuron, d_model, 1), ffn_params(neuron, d_model, 2)
    return max(1, round((relu - p1) / (p2 - p1)) + 1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (plain matmuls and softmax; the mask is a sliced constant)."""

    def __init__(self, d_model: int, heads: int, context: int) -> None:
        super().__init__()
        if d_model % heads:
            raise UsageError(f"gpt: d_model ({d_model}) must be a multiple of heads ({heads})")
        self.heads, self.d_model = heads, d_model
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        mask = torch.full((context, context), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        hd = c // self.heads
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.reshape(b, t, self.heads, hd).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd)) + self.mask[:t, :t]
        y = att.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class FeedForward(nn.Module):
    """``fc2(act(fc1(x)))``; ``fc1`` quadratic unless ``neuron`` is relu/gelu."""

    def __init__(self, d_model: int, width: int, neuron: str, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, width) if neuron in PLAIN else linear(neuron, d_model, width)
        self.act = ACTS[act]()
        self.fc2 = nn.Linear(width, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, d_model: int, heads: int, context: int, width: int, neuron: str, act: str) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, context)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, width, neuron, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class GPT(nn.Module):
    """Byte-level decoder-only transformer: token + position embeddings, pre-norm blocks, final LayerNorm, head.

    Args:
        neuron: feed-forward neuron: ``relu``/``gelu`` or a quadratic type.
        vocab_size: token ids ``0 .. vocab_size - 1`` (256: bytes).
        context: longest sequence (position table).
        d_model: embedding width.
        layers: number of blocks.
        heads: attention heads.
        ffn_width: feed-forward width (default :func:`default_ffn_width`).
        act: activation after ``fc1``: ``relu``, ``gelu`` or ``none`` (default: the plain neuron's own, ``none``
            after a quadratic ``fc1``).
    """

    def __init__(self, neuron: str = "relu", vocab_size: int = 256, context: int = 64, d_model: int = 64,
                 layers: int = 2, heads: int = 4, ffn_width: int | None = None, act: str | None = None) -> None:
        super().__init__()
        act = act or (neuron if neuron in PLAIN else "none")
        if act not in ACTS:
            raise UsageError(f"gpt: act must be one of {', '.join(ACTS)}, got {act!r}")
        for name, v in (("vocab_size", vocab_size), ("context", context), ("d_model", d_model), ("layers", layers),
                        ("heads", heads)):
            if int(v) < 1:
                raise UsageError(f"gpt: {name} must be >= 1, got {v}")
        self.ffn_width = int(ffn_width or default_ffn_width(neuron, d_model))
        self.token_input = TokenInput(vocab_size=int(vocab_size), context=int(context))
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, context, self.ffn_width, neuron, act)
                                    for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self._init(layers)

    @torch.no_grad()
    def _init(self, layers: int) -> None:
        """GPT-2 style: N(0, 0.02) embeddings and plain linear maps, residual outputs (``proj``, ``fc2``) scaled by
        ``1/sqrt(2 layers)``; a plain ``fc1`` Kaiming-normal like the ``r`` branch of a quadratic one, which keeps
        its ReLinear initialisation."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.Linear) and name.count(".fc1.") == 0:
                if name.endswith(".fc1"):
                    nn.init.kaiming_normal_(m.weight)
                else:
                    std = 0.02 / math.sqrt(2 * layers) if name.endswith((".proj", ".fc2")) else 0.02
                    nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos.weight[:t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@register_model("gpt", input_shape=(64,), width_arg="ffn_width", default_width=256, plain_neurons=("gelu",))
def gpt(neuron: str = "relu", num_classes: int = 256, in_channels: int = 1, input_size=(28, 28),
        vocab_size: int = 256, context: int = 64, d_model: int = 64, layers: int = 2, heads: int = 4,
        ffn_width: int | None = None, act: str | None = None) -> nn.Module:
    """Byte-level GPT (:class:`GPT`); ``num_classes``/``in_channels``/``input_size`` (image options) are ignored:
    the vocabulary is ``vocab_size``."""
    return GPT(neuron, vocab_size, context, d_model, layers, heads, ffn_width, act)
