"""What a model is fed: one :class:`InputSpec` per tensor its ``forward`` takes (name, per-sample shape, and the
range random inputs are drawn from), resolved from the caller's arguments or a run's record (issue #30).

- **Several inputs.** A model whose ``forward(x, t)`` takes two tensors has two specs. ``example_input`` may be a
  tuple and ``input_shape`` a list of shapes (one per input); the CLI repeats ``--input-shape``. One input keeps the
  ONNX name ``input``; several are named after the ``forward`` parameters (``x``, ``t``).
- **Input range.** Random inputs are standard normal, or uniform in ``[lo, hi]`` where a range is given
  (``input_range=(0, 1)``, one pair for all inputs, or one per input; CLI ``--input-range 0,1``).
- **The record.** A run keeps ``meta["input_shape"]`` (the first input's shape, as it always did),
  ``meta["inputs"] = [{"name", "shape"}, ...]`` when there are several inputs, and ``meta["input_range"] =
  [[lo, hi], ...]`` (one pair per input) when a range was given; :func:`resolve` reads them back.
- **Refusals in one line.** :func:`check_count` refuses a number of shapes ``forward`` does not take;
  :func:`explain_forward` turns a forward that fails on the inputs into a :class:`~quadexport.errors.UsageError`
  naming the layer that expected something else (``conv1 (Conv2d) expects 1 input channel(s)``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import traceback
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from quadexport.errors import QuadexportError, UsageError
from quadexport.runmeta import RunMeta

__all__ = ["InputSpec", "ModelInputs", "SINGLE_NAME", "as_tuple", "check_count", "explain_forward",
           "forward_names", "parse_ranges", "resolve"]

SINGLE_NAME = "input"
"""The ONNX input name of a one-input model (as it always was)."""

Range = tuple[float, float]


@dataclass(frozen=True)
class InputSpec:
    """One input: its ONNX ``name``, one sample's ``shape`` (no batch dimension) and the ``range`` random values are
    drawn from (uniform; ``None``: standard normal)."""

    name: str
    shape: tuple[int, ...]
    range: Range | None = None

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """A float32 batch of random inputs."""
        size = (int(batch), *self.shape)
        if self.range is None:
            return torch.randn(size, generator=generator)
        lo, hi = self.range
        return torch.rand(size, generator=generator) * (hi - lo) + lo

    def draw_numpy(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """A float32 batch of random inputs from a NumPy generator."""
        size = (int(batch), *self.shape)
        if self.range is None:
            return rng.standard_normal(size).astype(np.float32)
        return rng.uniform(self.range[0], self.range[1], size).astype(np.float32)

    def describe(self) -> str:
        """``x 1`` / ``input 3x32x32 in [0, 1]``."""
        rng = f" in [{self.range[0]:g}, {self.range[1]:g}]" if self.range is not None else ""
        return f"{self.name} {'x'.join(map(str, self.shape))}{rng}"


@dataclass(frozen=True)
class ModelInputs:
    """The inputs of a model, in ``forward`` order."""

    specs: tuple[InputSpec, ...]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [s.shape for s in self.specs]

    @property
    def ranges(self) -> list[Range | None]:
        return [s.range for s in self.specs]

    @property
    def several(self) -> bool:
        return len(self.specs) > 1

    def __len__(self) -> int:
        return len(self.specs)

    def example(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random float32 batches, one per input (one generator, seeded, drawn in input order)."""
        g = torch.Generator().manual_seed(seed)
        return tuple(s.draw(batch, g) for s in self.specs)

    def numpy(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Random float32 arrays, one per input."""
        return tuple(s.draw_numpy(batch, rng) for s in self.specs)

    def meta(self) -> dict[str, Any]:
        """What a run records (see the module docstring); one input without a range: ``input_shape`` alone."""
        out: dict[str, Any] = {"input_shape": list(self.shapes[0])}
        if self.several:
            out["inputs"] = [{"name": s.name, "shape": list(s.shape)} for s in self.specs]
        if any(r is not None for r in self.ranges):
            out["input_range"] = [list(r) if r is not None else None for r in self.ranges]
        return out

    def describe(self) -> str:
        """``x 1, t 1`` (one input: its shape only, ``3x32x32``)."""
        if not self.several:
            return self.specs[0].describe().split(" ", 1)[1]
        return ", ".join(s.describe() for s in self.specs)


def as_tuple(x: Any) -> tuple[Any, ...]:
    """One tensor (or array) → ``(x,)``; a tuple or list of them → a tuple."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _forward_params(model: nn.Module) -> tuple[list[str], int, int | None]:
    """``(positional parameter names, how many are required, how many it takes at most (None: *args))``."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return [], 0, None
    pos = [p for p in sig.parameters.values()
           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    required = sum(1 for p in pos if p.default is p.empty)
    return [p.name for p in pos], required, None if var else len(pos)


def _model_name(model: nn.Module) -> str:
    return type(model).__name__


def check_count(model: nn.Module, n: int) -> None:
    """Refuse ``n`` inputs when ``model.forward`` does not take that many tensors (one line naming its
    parameters)."""
    names, required, most = _forward_params(model)
    if required <= n and (most is None or n <= most):
        return
    takes = (f"{required}" if most == required else f"{required} to {most}" if most is not None
             else f"at least {required}")
    raise UsageError(f"{_model_name(model)}.forward takes {takes} input(s) ({', '.join(names) or '-'}) but "
                     f"{n} input shape(s) were given: give one shape per input, in forward's order (CLI: repeat "
                     f"--input-shape; API: input_shape=[shape, ...] or example_input=(x, ...))")


def forward_names(model: nn.Module, n: int) -> list[str]:
    """ONNX input names: ``["input"]`` for one input; for several, ``forward``'s parameter names (``input_<i>``
    past its named parameters)."""
    if n == 1:
        return [SINGLE_NAME]
    names, _, _ = _forward_params(model)
    return [names[i] if i < len(names) else f"input_{i}" for i in range(n)]


def parse_ranges(value: Any, n: int) -> list[Range | None] | None:
    """``input_range``: ``None``; one ``(lo, hi)`` for every input; or one pair (or ``None``) per input.

    Raises:
        UsageError: not pairs of finite numbers with ``lo < hi``, or a count other than 1 or ``n``.
    """
    if value is None:
        return None
    pairs = list(value)
    if len(pairs) == 2 and all(isinstance(v, (int, float, np.floating, np.integer)) for v in pairs):
        pairs = [tuple(pairs)] * n
    elif len(pairs) == 1 and n > 1:
        pairs = pairs * n
    if len(pairs) != n:
        raise UsageError(f"input_range gives {len(pairs)} range(s) for {n} input(s): give one LO,HI for all "
                         f"inputs or one per input (CLI: --input-range once, or once per --input-shape)")
    out: list[Range | None] = []
    for p in pairs:
        if p is None:
            out.append(None)
            continue
        try:
            lo, hi = (float(v) for v in p)
        except (TypeError, ValueError):
            raise UsageError(f"input range {p!r} is not a pair LO,HI of numbers") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UsageError(f"input range {lo:g},{hi:g} must be finite with LO < HI")
        out.append((lo, hi))
    return out


def _shapes(input_shape: Any) -> list[tuple[int, ...]]:
    """One shape ``(3, 32, 32)`` or several ``[(1,), (1,)]`` → a list of shapes."""
    seq = list(input_shape)
    several = bool(seq) and all(isinstance(s, (tuple, list, torch.Size)) for s in seq)
    shapes = [tuple(int(d) for d in s) for s in seq] if several else [tuple(int(d) for d in seq)]
    if not shapes or any(not s or min(s) < 1 for s in shapes):
        raise UsageError(f"input shape {input_shape!r}: give one sample's shape (no batch dimension), integers "
                         f">= 1, e.g. (3, 32, 32), or one such shape per input")
    return shapes


def _recorded(model: nn.Module) -> tuple[list[tuple[int, ...]] | None, list[str] | None, Any]:
    """``(shapes, names, ranges)`` the model's run recorded (:class:`~quadexport.runmeta.RunMeta`: its inputs, else
    its input shape, else what its build arguments imply), each ``None`` when absent."""
    rec = RunMeta.of(model)
    if rec.inputs:
        return rec.input_shapes(), [str(i["name"]) for i in rec.inputs], rec.input_range
    return (rec.input_shapes() or None), None, rec.input_range


def resolve(model: nn.Module, example_input: Any = None, input_shape: Any = None, input_range: Any = None
            ) -> ModelInputs | None:
    """The model's inputs: from ``example_input`` (a tensor or a tuple of them), else ``input_shape`` (one shape or
    one per input), else what the model's run recorded; ranges from ``input_range``, else the recorded ones (when
    they fit). ``None`` when no shape can be told.

    Raises:
        UsageError: a count of inputs ``forward`` does not take, bad shapes or ranges.
    """
    names: list[str] | None = None
    recorded_ranges = None
    if example_input is not None:
        shapes = [tuple(int(d) for d in t.shape[1:]) for t in as_tuple(example_input)]
    elif input_shape is not None:
        shapes = _shapes(input_shape)
    else:
        shapes, names, recorded_ranges = _recorded(model)
        if shapes is None:
            return None
    if input_range is None:
        rec = recorded_ranges if recorded_ranges is not None else RunMeta.of(model).input_range
        input_range = rec if isinstance(rec, (list, tuple)) and len(rec) == len(shapes) else None
    if names is None:
        check_count(model, len(shapes))
        names = forward_names(model, len(shapes))
    ranges = parse_ranges(input_range, len(shapes)) or [None] * len(shapes)
    return ModelInputs(tuple(InputSpec(n, s, r) for n, s, r in zip(names, shapes, ranges)))


# ------------------------------------------------------------------------------------------ one-line refusals
def _user_frame(tb: Any) -> str:
    """``file:line: code`` of the innermost frame outside torch and quadexport (the model's own code), or ``""``."""
    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
    frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(skip)]
    if not frames:
        return ""
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}: {(f.line or '').strip()}"


def _expects(mod: nn.Module, got: tuple[int, ...] | None) -> str | None:
    """``expects 1 input channel(s) but receives [2, 3, 16, 16]`` for the layer kinds whose input size is known."""
    want = None
    if isinstance(mod, nn.modules.conv._ConvNd):
        have = got[1] if got is not None and len(got) > 1 else None
        want = f"{mod.in_channels} input channel(s)" + (f", got {have}" if have is not None else "")
    elif isinstance(mod, nn.Linear):
        have = got[-1] if got else None
        want = f"{mod.in_features} input feature(s) in its last dimension" + (
            f", got {have}" if have is not None else "")
    elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
        have = got[1] if got is not None and len(got) > 1 else None
        want = f"{mod.num_features} channel(s)" + (f", got {have}" if have is not None else "")
    if want is None:
        return None
    return f"expects {want}" + (f" (its input is {list(got)})" if got is not None else "")


@contextlib.contextmanager
def explain_forward(model: nn.Module, inputs: ModelInputs | str) -> Iterator[None]:
    """Run ``model``'s forward inside this block: an exception it raises (not a quadexport error) becomes one
    :class:`UsageError` line naming the innermost layer it failed in and what that layer expects, the model's own
    source line, and torch's reason."""
    stack: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def enter(mod: nn.Module, args: Any) -> None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        stack.append((names.get(mod, ""), mod, tuple(first.shape) if first is not None else None))

    def leave(mod: nn.Module, args: Any, out: Any) -> None:
        if stack:
            stack.pop()

    for m in names:
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        yield
    except QuadexportError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model refused the inputs: say where, in one line
        desc = inputs if isinstance(inputs, str) else inputs.describe()
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        inner = next((s for s in reversed(stack) if s[0]), None)
        exp = _expects(inner[1], inner[2]) if inner is not None else None
        where = f": layer {inner[0]} ({type(inner[1]).__name__}) {exp or 'fails'}" if inner is not None else ""
        why = "" if exp else f" ({type(e).__name__}: {reason})"  # a layer that says what it expects says enough
        line = _user_frame(e.__traceback__)
        raise UsageError(f"{_model_name(model)} does not take inputs of shape {desc}{where}{why}"
                         + (f" [{line}]" if line else "") + "; give the shape(s) the model was built for (CLI: "
                         "--input-shape, once per input)") from None
    finally:
        for h in handles:
            h.remove()
