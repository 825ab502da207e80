"""Models to benchmark: zoo names (built untrained, ready for timing) and run dirs (trained weights).

Untrained zoo models get the ReLinear initialisation plus a small perturbation of the quadratic branches
(``W_g``, ``W_b`` += N(0, :data:`PERTURB_STD`²): :func:`quadexport.layers.init.perturb_quadratic`) and BatchNorm
statistics calibrated on N(0, 1) inputs (:func:`~quadexport.layers.init.calibrate_bn`), so the
quadratic terms are live but the activations stay finite through depth (values do not change the work done, but
NaN/Inf can take slow paths); run dirs are timed with their trained weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quadexport.runmeta import RunMeta, config_dict, meta_dict
from quadexport._torchutil import one_thread
from quadexport.bench.config import DEFAULT_INPUT_SHAPE, PERTURB_STD, BenchError
from quadexport.bench.tokens import default_shape, torch_input
from quadexport.data.inputs import ModelInputs, explain_forward, resolve
from quadexport.errors import UsageError, did_you_mean
from quadexport.layers.init import calibrate_bn, perturb_quadratic
from quadexport.exporter.outputs import flatten
from quadexport.zoo import count_macs, count_params, get_model_info, list_models
from quadexport.transforms import create_model
from quadexport.zoo.foreign import is_foreign

__all__ = ["BenchModel"]  # the helpers below are used by the bench package


@dataclass
class BenchModel:
    """One benchmarked model.

    Attributes:
        id: unique key, ``<label>-<neuron>`` (e.g. ``resnet20-fan``, ``mlp-w170-relu``).
        label: model name, with ``-w<width>`` when the width is not the builder's default.
        name: zoo builder name.
        neuron: neuron type, ``"relu"`` for the ReLU models.
        role: ``quadratic``, ``twin``, ``mac_matched`` or ``relu`` (a ReLU model given without a quadratic one).
        module: the eval-mode torch model.
        input_shape: one sample's shape ``(C, H, W)`` (the first input's, for several).
        macs: MACs of one sample (:func:`quadexport.count_macs`).
        params: learnable parameters.
        source: ``"zoo"`` (built here) or the run dir it was loaded from.
        test_acc: test accuracy of a run dir (``None`` for zoo models).
        note: how the model was chosen (baselines).
    """

    id: str
    label: str
    name: str
    neuron: str
    role: str
    module: nn.Module
    input_shape: tuple[int, ...]
    macs: int
    params: int
    source: str = "zoo"
    test_acc: float | None = None
    note: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    perturb_std: float | None = None
    inputs: ModelInputs | None = None
    """The inputs when the model takes several or draws them from a range (a run's record), else ``None``."""

    @property
    def is_quadratic(self) -> bool:
        return self.neuron != "relu"

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.label, "name": self.name, "neuron": self.neuron, "role": self.role,
                "source": self.source, "input_shape": list(self.input_shape), "macs": self.macs,
                "params": self.params, "test_acc": self.test_acc, "note": self.note, "config": self.config,
                **({"inputs": [s.describe() for s in self.inputs.specs]} if self.inputs is not None else {}),
                "weights": "trained" if self.source != "zoo" else (
                    ("ReLinear init" + (f" + N(0, {self.perturb_std:g}²) on W_g/W_b" if self.perturb_std else "")
                     if self.is_quadratic else "Kaiming init") + ", BN statistics calibrated on N(0, 1) inputs")}


def _default_width(name: str) -> int | None:
    try:
        info = get_model_info(name)
    except UsageError:
        return None
    return info.default_width if info.width_arg else None


def _label(name: str, config: dict[str, Any]) -> str:
    try:
        arg = get_model_info(name).width_arg or "width"
    except UsageError:
        arg = "width"
    w = config.get(arg)
    if w is not None and w != _default_width(name):
        return f"{name}-w{w}"
    return name




@functools.lru_cache(maxsize=256)
def _zoo_macs(name: str, neuron: str, shape: tuple[int, ...], kwargs: tuple[tuple[str, Any], ...] = ()) -> int:
    """MACs of a zoo model (independent of its weights; cached, the MAC-matching search probes many models)."""
    with torch.random.fork_rng(devices=[]), one_thread():
        m = create_model(name, neuron, in_channels=shape[0], input_size=tuple(shape[1:]), **dict(kwargs))
        return count_macs(m, tuple(shape))


@torch.no_grad()
def _finite_on_random(model: nn.Module, shape: tuple[int, ...], seed: int = 12345, n: int = 16) -> bool:
    x = torch_input(model, (n, *shape), torch.Generator().manual_seed(seed))
    return all(bool(torch.isfinite(t).all()) for t in flatten(model(x)))


def _build(name: str, neuron: str, shape: tuple[int, ...], gen: torch.Generator, **kwargs: Any) -> nn.Module:
    """A zoo model ready for timing: ReLinear init (+ a small perturbation of ``W_g``/``W_b`` for quadratic
    neurons, reduced 4× at a time if the outputs on N(0, 1) inputs are not finite), BN statistics calibrated."""
    std = PERTURB_STD
    for _ in range(4):
        model = create_model(name, neuron, in_channels=shape[0], input_size=tuple(shape[1:]), **kwargs)
        if neuron != "relu":
            perturb_quadratic(model, std, generator=gen)
        calibrate_bn(model, tuple(shape), gen)
        if neuron == "relu" or _finite_on_random(model, tuple(shape)):
            model.quadexport_bench_perturb = std if neuron != "relu" else None
            return model
        std /= 4
    raise BenchError(f"{name} ({neuron}) gives NaN/Inf outputs on N(0, 1) inputs even with W_g/W_b perturbed by "
                     f"N(0, {4 * std:g}²); pass a trained run dir instead")


def _recorded_inputs(module: nn.Module) -> ModelInputs | None:
    """The inputs a run recorded when they are more than one N(0, 1) tensor (several, or a range), else None."""
    rec = RunMeta.of(module)
    if not (rec.inputs or rec.input_range):
        return None
    return resolve(module)


def _make(module: nn.Module, role: str, shape: tuple[int, ...], source: str = "zoo",
          note: str | None = None) -> BenchModel:
    cfg = config_dict(module)
    inputs = _recorded_inputs(module)
    if inputs is not None and not inputs.several:
        inputs = resolve(module, input_shape=tuple(shape))  # the recorded range at the timed shape
    name, neuron = cfg.get("name", type(module).__name__.lower()), cfg.get("neuron", "relu")
    label = _label(name, cfg)
    meta = meta_dict(module)
    acc = meta.get("test_acc")
    kw = tuple(sorted((k, v) for k, v in cfg.items() if k not in ("name", "neuron", "in_channels", "input_size")))
    try:
        macs = _zoo_macs(name, neuron, tuple(shape), kw) if "name" in cfg and inputs is None else None
    except TypeError:  # unhashable builder options
        macs = None
    if macs is None:
        with one_thread():
            macs = count_macs(module, inputs.shapes if inputs is not None and inputs.several else tuple(shape))
    return BenchModel(id=f"{label}-{neuron}", label=label, name=name, neuron=neuron, role=role, module=module,
                      input_shape=tuple(shape), macs=macs, params=count_params(module),
                      source=source, test_acc=float(acc) if isinstance(acc, (int, float)) else None, note=note,
                      config={k: v for k, v in cfg.items() if k != "name"},
                      perturb_std=getattr(module, "quadexport_bench_perturb", None), inputs=inputs)


def _check_forward(module: nn.Module, shape: tuple[int, ...], what: str) -> None:
    cfg = config_dict(module)
    cin = cfg.get("in_channels")
    inputs = _recorded_inputs(module)
    if inputs is not None:  # several inputs or a range: the run's specs (one line naming a layer that refuses)
        if not inputs.several:
            inputs = resolve(module, input_shape=tuple(shape))
        with explain_forward(module, inputs), torch.inference_mode(), one_thread():
            out = module(*inputs.example(2, seed=1))
        if not all(bool(torch.isfinite(t).all()) for t in flatten(out)):
            raise BenchError(f"{what} produces NaN/Inf outputs on random inputs ({inputs.describe()}); the timing "
                             f"would be meaningless (NaN/Inf can take slow paths)")
        return
    if cin is not None and cin != shape[0] and getattr(module, "token_input", None) is None:
        raise BenchError(f"{what} takes {cin} input channel(s), but the input shape is {' '.join(map(str, shape))} "
                         f"({shape[0]} channel(s)); pass --input-shape {cin} H W")
    try:
        with torch.inference_mode(), one_thread():
            out = module(torch_input(module, (2, *shape), torch.Generator().manual_seed(1)))
    except Exception as e:  # shape errors surface as RuntimeError from torch
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BenchError(f"{what} cannot take input shape {' '.join(map(str, shape))} (C H W): {msg}") from None
    if not all(bool(torch.isfinite(t).all()) for t in flatten(out)):
        raise BenchError(f"{what} produces NaN/Inf outputs on N(0, 1) inputs of shape {shape}; the timing would "
                         f"be meaningless (NaN/Inf can take slow paths)")


def _load_entry(entry: str, neuron: str, shape: tuple[int, ...] | None, gen: torch.Generator) -> BenchModel:
    p = Path(entry)
    if p.exists():
        from quadexport.runs.checkpoint import load

        module = load(p)
        rec = RunMeta.of(module)
        if rec.inputs and shape is not None:
            raise BenchError(f"run dir {entry} takes {len(rec.inputs)} inputs "
                             f"({', '.join(i['name'] for i in rec.inputs)}) of the shapes it records; drop "
                             f"--input-shape")
        trained = rec.input_shape
        s = tuple(shape) if shape is not None else (trained or default_shape(module) or DEFAULT_INPUT_SHAPE)
        _check_forward(module, s, f"run dir {entry}")
        cfg = module.quadexport_config
        role = "quadratic" if cfg.get("neuron", "relu") != "relu" else "relu"
        return _make(module, role, s, source=str(p))
    if entry not in list_models() and not is_foreign(entry):
        raise BenchError(f"{entry!r} is neither a run dir nor a zoo model{did_you_mean(entry, list_models())}; zoo "
                         f"models: {', '.join(list_models())} (or torchvision:<arch>, timm:<arch>)")
    s = tuple(shape) if shape is not None else (default_shape(get_model_info(entry)) if entry in list_models()
                                                 else None) or DEFAULT_INPUT_SHAPE
    try:
        module = _build(entry, neuron, s, gen)
    except BenchError:
        raise
    except ValueError as e:
        raise BenchError(f"cannot build {entry} for input shape {s}: {e}") from None
    _check_forward(module, s, f"{entry} ({neuron})")
    return _make(module, "quadratic" if neuron != "relu" else "relu", s)


def _zoo_kwargs(m: BenchModel) -> dict[str, Any]:
    """Builder options of ``m`` for its ReLU relatives (a quadratized model's layer list is not one, nor is a
    compressed model's rewrite: ``create_model`` replays it on any model and a ReLU relative has nothing to prune)."""
    kw = {k: v for k, v in m.config.items()
          if k not in ("neuron", "in_channels", "input_size", "quadratize", "compress")}
    try:
        arg = get_model_info(m.name).width_arg
    except UsageError:
        arg = None
    if arg and arg not in kw and isinstance(getattr(m.module, arg, None), int):  # a width the builder chose
        kw[arg] = getattr(m.module, arg)  # (gpt's parameter-matched ffn_width): the twin has the same width
    return kw


def _source_run(m: BenchModel, max_hops: int = 8) -> str | None:
    """The ReLU run dir a quadratized model came from, if it is still there: ``quadexport quadratize`` and
    ``train --from`` record their source run in ``meta["source"]["run"]``; the chain is followed to a ReLU run."""
    if "quadratize" not in m.config:
        return None
    from quadexport.runs.checkpoint import CheckpointError, read_checkpoint

    meta = meta_dict(m.module)
    for _ in range(max_hops):
        src = (meta.get("source") or {}).get("run")
        if not src or not Path(src, "checkpoint.pt").exists():
            return None
        try:
            ckpt = read_checkpoint(src)
        except CheckpointError:
            return None
        if ckpt["config"].get("neuron") == "relu":
            return src
        meta = ckpt["meta"]
    return None


