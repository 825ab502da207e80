"""Dynamic spatial sizes (``export(..., dynamic_size=True)``): which axes, a probe that names the op baking in a
size, and readable ONNX dim names.

Besides the batch, H and W (L for 1-D, D/H/W for 3-D) become dynamic. Before tracing, the model is run eagerly at
twice the example size (doubling keeps any divisibility by strides): a model that bakes its input size in (a reshape
to fixed dims, a ``Linear`` after ``flatten``) fails there, and the error names the module and the source line.
torch.export is then given ``Dim.DYNAMIC`` for those axes (it raises if it would specialise one to a constant),
and the symbols it picked (``s16``...) are renamed ``height``/``width``/``length`` in the ONNX graph.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from typing import Any

import torch
from torch import nn

from quadexport.errors import UsageError

log = logging.getLogger(__name__)

__all__ = ["META_DYNAMIC", "DynamicSizeError", "check_sizes", "dynamic_axes", "probe", "rename_dims",
           "torch_error_line"]

META_DYNAMIC = "quadexport.dynamic_size"
_AXES = {3: ("length",), 4: ("height", "width"), 5: ("depth", "height", "width")}


class DynamicSizeError(UsageError):
    """The model cannot run (or export) at another input size than the example's."""


def dynamic_axes(x: torch.Tensor) -> dict[int, str]:
    """``{axis: name}`` of the spatial axes of an input batch ``[N, C, *spatial]``."""
    names = _AXES.get(x.dim())
    if names is None:
        raise UsageError(f"dynamic_size needs an input [N, C, L], [N, C, H, W] or [N, C, D, H, W]; this one is "
                         f"{list(x.shape)}")
    return {2 + i: n for i, n in enumerate(names)}


def check_sizes(x: torch.Tensor) -> list[list[int]]:
    """The spatial sizes a dynamic file is checked at: the example's and twice it."""
    size = [int(s) for s in x.shape[2:]]
    return [size, [2 * s for s in size]]


def _user_frame(tb: Any) -> str:
    """``file:line: code`` of the innermost frame outside torch (the model's own code), or ``""``."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(torch_dir)]
    if not frames:
        return ""
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}: {(f.line or '').strip()}"


def probe(model: nn.Module, x: torch.Tensor) -> None:
    """Run ``model`` eagerly on one sample at twice the spatial size of ``x``.

    Raises:
        DynamicSizeError: the model fails there; one line naming the module that failed, torch's reason and the
            model's source line.
    """
    size = check_sizes(x)[1]
    big = torch.randn((1, x.shape[1], *size), generator=torch.Generator().manual_seed(0))
    stack: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def enter(mod: nn.Module, args: Any) -> None:
        stack.append(names[mod])

    def leave(mod: nn.Module, args: Any, out: Any) -> None:
        stack.pop()

    for m in names:
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with torch.no_grad():
            model(big)
    except Exception as e:  # noqa: BLE001 - any failure at another size is the answer
        where = stack[-1] if stack else ""
        mod = dict(model.named_modules()).get(where)
        what = f"{type(mod).__name__} {where!r}" if where else f"{type(model).__name__}.forward"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        line = _user_frame(e.__traceback__)
        raise DynamicSizeError(f"cannot export with a dynamic input size: {what} fails at input "
                               f"{'x'.join(map(str, big.shape[1:]))} ({reason})" + (f" [{line}]" if line else "")
                               + "; the model bakes in its input size: export without dynamic_size/--dynamic-size"
                               ) from None
    finally:
        for h in handles:
            h.remove()


def torch_error_line(e: BaseException) -> str:
    """The most telling line of a torch.export failure (constraint/guard messages first)."""
    lines: list[str] = []
    while e is not None:
        lines += [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    for key in ("Not all values", "specialized", "Constraints violated", "guard", "Could not guard"):
        hit = next((ln for ln in lines if key in ln), None)
        if hit:
            return hit[:300]
    return (lines[0] if lines else "unknown error")[:300]


def rename_dims(proto: Any, axes: dict[int, str]) -> None:
    """Rename the symbols torch.export picked for the input's dynamic axes to ``axes``' names, in the whole graph."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    mapping = {dims[a].dim_param: n for a, n in axes.items() if a < len(dims) and dims[a].dim_param}
    if not mapping:
        return
    for vi in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


def record(axes: dict[int, str], sizes: list[list[int]]) -> dict[str, str]:
    """The metadata entry of a dynamic-size file: ``{"axes": {"2": "height", ...}, "sizes": [[32, 32], [64, 64]]}``
    (``sizes``: where it is checked)."""
    return {META_DYNAMIC: json.dumps({"axes": {str(a): n for a, n in axes.items()}, "sizes": sizes})}


def recorded(props: dict[str, str]) -> dict[str, Any] | None:
    """The dynamic-size entry of a file's metadata, or ``None`` for a fixed-size file."""
    raw = props.get(META_DYNAMIC)
    return json.loads(raw) if raw else None
