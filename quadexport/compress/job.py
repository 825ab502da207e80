"""One compression in progress (shared by the stages of :mod:`quadexport.compress.api` and
:mod:`quadexport.compress.outputs`), the model helpers they use, and progress bars."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from quadexport.compress.config import CompressConfig
from quadexport.compress.report import CompressOutcome
from quadexport.compress.rundata import CompressData
from quadexport.zoo.structure import Structure

log = logging.getLogger("quadexport.compress.api")

__all__ = ["Job", "export_onnx", "macs", "twin_of"]


@dataclass
class Job:
    """Options, the source run, the data and what has been measured so far."""

    cfg: CompressConfig
    ckpt: dict[str, Any]
    meta: dict[str, Any]
    shape: tuple[int, ...]
    align: int
    already: bool  # the source run is itself compressed: int8 only
    o: CompressOutcome
    data: CompressData | None = None  # the run's dataset: calibration images, fine-tuning/validation/test splits
    threshold: float | None = None
    twin_model: nn.Module | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | None = None
    changed: bool = False
    structure: Structure | None = None
    searched_cost: float | None = None
    keep: dict[str, int] | None = None  # layer selection (--select layers): layer → quadratic channels
    accuracy: bool = True  # a classifier with labelled data: test/validation accuracy measured (else the task loss)
    run: Any = None  # quadexport.runs.rundir.RunDir: the locked staging dir that becomes ``o.out`` once complete

    @property
    def calib(self) -> torch.Tensor:
        """The calibration images (training split, validation split excluded)."""
        return self.data.calib

    @property
    def dir(self) -> Path:
        """Where the new run's files are written now (the staging dir; ``o.out`` once committed)."""
        return self.run.path if self.run is not None else self.o.out

    def say(self, msg: str) -> None:
        log.log(logging.INFO if self.cfg.verbose else logging.DEBUG, msg)

    def bar(self, items: Iterable[Any], desc: str) -> Iterable[Any]:
        """``items`` with a tqdm bar on a terminal (log lines are routed around it) when progress is on."""
        if not (self.cfg.progress and self.cfg.verbose and sys.stderr.isatty() and log.isEnabledFor(logging.INFO)):
            return items
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        def gen():
            with logging_redirect_tqdm(loggers=[logging.getLogger("quadexport")]):
                yield from tqdm(items, desc=desc, leave=False, file=sys.stderr)
        return gen()


def macs(model: nn.Module, shape: Sequence[int]) -> int:
    from quadexport.zoo import count_macs

    return count_macs(model, tuple(shape))


def twin_of(model: nn.Module) -> nn.Module:
    """The ReLU twin (same builder and options, ``neuron="relu"``, fresh weights) of a zoo, foreign or quadratized
    model (a quadratized one's twin is its source architecture: its ``quadratize`` spec is left out too)."""
    from quadexport.transforms import create_model

    cfg = {k: v for k, v in model.quadexport_config.items() if k not in ("compress", "quadratize")}
    name = cfg.pop("name")
    cfg["neuron"] = "relu"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model(name, **cfg).eval()


FAST_OPSET = 17
"""Opset of throw-away exports that are only timed (the layer selection's candidates): torch's TorchScript-based
exporter, ~10× faster than the dynamo exporter of opset ≥ 18, writes the same Conv/Mul/Add/Concat graph."""


def export_onnx(model: nn.Module, path: Path, shape: Sequence[int], opset: int | None = None) -> Path:
    from quadexport.exporter import export

    return export(model, path, mode="decomposed", input_shape=tuple(shape), **({"opset": opset} if opset else {}))
