"""float16 export with a range check first.

Quadratic layers square the dynamic range (``x*x``, ``r*g``), so a value of 256 already becomes 65536 > 65504 (the
largest float16). Before converting, :func:`calibrate` runs calibration inputs through the float32 model with forward
hooks and records, for every quadratic layer, the largest ``|x|``, ``|x*x|``, ``|branch output|``, ``|r*g|`` and
``|output|``, plus the largest output of every other leaf module, and counts the elements that would overflow.

:func:`to_fp16` then builds the export form: the model in half precision with float32 inputs and outputs
(``keep_io_types``), except that quadratic layers whose calibrated intermediates exceed ``safety * 65504`` stay in
float32 ("fp32 islands": their input is cast up, the layer runs in float32, the output is cast back down). A layer
whose *output* exceeds the float16 range cannot be rescued this way; it is reported and counted as an overflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quadexport._torchutil import shared_copy
from quadexport.layers.quad import QuadLayer

Tensor = torch.Tensor
FP16_MAX = 65504.0
DEFAULT_SAFETY = 0.25

__all__ = ["DEFAULT_SAFETY", "FP16_MAX", "Fp16IO", "Fp32Island", "RangeReport", "calibrate", "to_fp16"]


@dataclass
class RangeReport:
    """Calibrated magnitudes (max ``|value|``) per module and the overflow counts (elements above 65504).

    Attributes:
        quad: ``{layer: {"x", "x2", "branch:<n>", "r*g", "out": max |value|}}`` for quadratic layers.
        other: ``{module: max |output|}`` for the other leaf modules.
        overflow: ``{"<module>:<tensor>": number of elements above 65504}`` (only non-zero entries).
        islands: quadratic layers kept in float32.
        safety: the safety fraction used.
        samples: number of calibration samples.
    """

    quad: dict[str, dict[str, float]] = field(default_factory=dict)
    other: dict[str, float] = field(default_factory=dict)
    overflow: dict[str, int] = field(default_factory=dict)
    islands: list[str] = field(default_factory=list)
    safety: float = DEFAULT_SAFETY
    samples: int = 0

    @property
    def overflow_count(self) -> int:
        return sum(self.overflow.values())

    def output_overflows(self) -> list[str]:
        """Modules whose *output* exceeds the float16 range (islands cannot help)."""
        return [k.rsplit(":", 1)[0] for k in self.overflow if k.endswith(":out")]

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "safety": self.safety, "islands": self.islands,
                "overflow_count": self.overflow_count, "overflow": self.overflow,
                "max_abs_quadratic": {k: max(v.values()) for k, v in self.quad.items()}}


def _amax(t: Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


def _over(t: Tensor) -> int:
    return int((t.detach().abs() > FP16_MAX).sum())


@torch.no_grad()
def calibrate(model: nn.Module, inputs: Tensor, batch_size: int = 64) -> RangeReport:
    """Run ``inputs`` through ``model`` (float32, eval) and record the magnitudes float16 would have to hold.

    Args:
        model: the float32 model (not modified; hooks are removed afterwards).
        inputs: calibration batch (e.g. real test images).
        batch_size: forward batch size.
    """
    rep = RangeReport(samples=int(inputs.shape[0]))
    handles = []
    branch_of: dict[int, tuple[str, str]] = {}
    pending: dict[str, dict[str, Tensor]] = {}

    def put(store: dict[str, float], key: str, value: float) -> None:
        store[key] = max(store.get(key, 0.0), value)

    def count(key: str, t: Tensor) -> None:
        n = _over(t)
        if n:
            rep.overflow[key] = rep.overflow.get(key, 0) + n

    for name, m in model.named_modules():
        if isinstance(m, QuadLayer):
            for br in m.neuron_type.branches:
                branch_of[id(getattr(m, br.name))] = (name, br.name)

            def pre(mod: nn.Module, args: tuple, name: str = name) -> None:
                x = args[0]
                st = rep.quad.setdefault(name, {})
                put(st, "x", _amax(x))
                if mod.neuron_type.needs_square:
                    x2 = x * x
                    put(st, "x2", _amax(x2))
                    count(f"{name}:x2", x2)
                pending[name] = {}

            def post(mod: nn.Module, args: tuple, out: Tensor, name: str = name) -> None:
                st, outs = rep.quad[name], pending.pop(name, {})
                if "r" in outs and "g" in outs:
                    rg = outs["r"] * outs["g"]
                    put(st, "r*g", _amax(rg))
                    count(f"{name}:r*g", rg)
                put(st, "out", _amax(out))
                count(f"{name}:out", out)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        elif not list(m.children()):
            def leaf(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                if id(mod) in branch_of:
                    lname, bname = branch_of[id(mod)]
                    put(rep.quad[lname], f"branch:{bname}", _amax(out))
                    count(f"{lname}:branch:{bname}", out)
                    pending.setdefault(lname, {})[bname] = out
                elif isinstance(out, Tensor) and out.is_floating_point():
                    put(rep.other, name, _amax(out))
                    count(f"{name}:out", out)

            handles.append(m.register_forward_hook(leaf))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, inputs.shape[0], batch_size):
            model(inputs[i:i + batch_size].float())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return rep


class Fp32Island(nn.Module):
    """Runs the wrapped module in float32 inside a float16 model.

    Args:
        module: the module (converted to float32).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.float()).half()


class Fp16IO(nn.Module):
    """float32 in, float16 inside, float32 out (``keep_io_types``).

    Args:
        model: the half-precision model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        from torch.utils._pytree import tree_map

        return tree_map(lambda o: o.float() if isinstance(o, Tensor) else o, self.model(x.half()))


def to_fp16(model: nn.Module, report: RangeReport, safety: float = DEFAULT_SAFETY) -> nn.Module:
    """The float16 export form of ``model`` (a new module; ``model`` is not modified).

    Args:
        model: float32 model in its export form (BN folded etc.); layer names must match those in ``report``.
        report: :func:`calibrate` result; its ``islands`` and ``safety`` are filled in.
        safety: a quadratic layer stays float32 if any calibrated intermediate exceeds ``safety * 65504``.
    """
    limit = safety * FP16_MAX
    report.safety = safety
    report.islands = sorted(n for n, st in report.quad.items() if max(st.values(), default=0.0) > limit)
    work = shared_copy(model).half()  # new half tensors; no float32 copy first
    mods = dict(work.named_modules())
    for name in report.islands:
        parent, _, attr = name.rpartition(".")
        setattr(mods[parent] if parent else work, attr, Fp32Island(mods[name]))
    return Fp16IO(work).eval()
