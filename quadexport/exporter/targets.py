"""Export targets (the ``mode=`` of :func:`quadexport.export`), in one registry.

Each target is a small object (brevitas export-manager style) that says how to

- **prepare** the model copy before tracing (swap quadratic layers for their export forms) and which
  ``custom_translation_table`` the dynamo exporter needs,
- **post-process** the traced ONNX graph (attach the ``quadexport`` function bodies, ...),
- **describe** the file in its metadata (``quadexport.runtime``),
- **open** an onnxruntime session for the file it wrote (the fused target registers the kernel library).

Built in:

- ``decomposed``: standard ONNX ops only (``Conv``/``Gemm``, ``Mul``, ``Add``); any runtime, any tool.
- ``function``: one ``quadexport::QuadLinear``/``QuadConv1d``/``QuadConv2d`` node per quadratic layer with a
  model-local function body in standard ops (stock onnxruntime and ``onnx.reference`` inline it).
- ``fused``: the same graph and bodies, marked ``quadexport.runtime=fused``; its sessions register the kernel
  library (and fall back to the bodies, with a warning, when it is not built).

The CLI's ``--mode`` choices, ``quadexport.bench``, ``quadexport.check`` and the tests read this registry
(:func:`list_export_targets`, :func:`get_export_target`), so the modes are listed here only. The opset range is
also defined here, once, for the API and the CLI (:func:`check_opset`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from quadexport.errors import UsageError, did_you_mean

if TYPE_CHECKING:  # onnx and torch load with the exporter, not with the registry (the CLI lists the modes)
    import onnx
    from torch import nn

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 13, 23
"""Opsets quadexport exports (both ends included)."""
DYNAMO_OPSETS = range(18, MAX_OPSET + 1)
"""Opsets exported with ``torch.onnx.export(dynamo=True)``; below that, the legacy TorchScript exporter."""
LEGACY_OPSETS = range(MIN_OPSET, DYNAMO_OPSETS.start)
DEFAULT_OPSET = 20

__all__ = ["DEFAULT_OPSET", "DYNAMO_OPSETS", "DecomposedTarget", "ExportTarget", "FunctionTarget", "FusedTarget",
           "LEGACY_OPSETS", "MAX_OPSET", "MIN_OPSET", "Prepared", "check_opset", "get_export_target",
           "list_export_targets", "register_export_target"]


@dataclass
class Prepared:
    """What :meth:`ExportTarget.prepare` did to the model copy.

    Attributes:
        translation_table: ``custom_translation_table`` for the dynamo exporter (``None``: none needed).
        notes: metadata notes (``quadexport.<key>``) about the preparation.
    """

    translation_table: dict[Any, Callable[..., Any]] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class ExportTarget:
    """Base of the export targets. Subclasses set the class attributes and override the hooks they need.

    Attributes:
        name: the ``mode=`` value.
        description: one line for ``--help`` and docs.
        legacy_opsets: whether opsets below 18 (legacy TorchScript exporter) are allowed.
        supports_fp16: whether ``fp16=True`` is allowed.
        kernel_library: :func:`~quadexport.exporter.session.make_session` policy for the files it writes.
        runtime: metadata ``quadexport.runtime`` (``None``: not set).
    """

    name: str = ""
    description: str = ""
    legacy_opsets: bool = False
    supports_fp16: bool = False
    kernel_library: str = "never"
    runtime: str | None = None

    def validate(self, model: nn.Module) -> None:
        """Refuse (one-line :class:`UsageError`) a model this target cannot export meaningfully, before any work."""

    def prepare(self, model: nn.Module, *, stack_linear: bool | None = None) -> Prepared:
        """Swap in the export forms of this target (in place, on the exporter's deep copy)."""
        return Prepared()

    def postprocess(self, proto: onnx.ModelProto) -> dict[str, Any]:
        """Adjust the traced graph (in place); returns metadata notes."""
        return {}

    def metadata(self) -> dict[str, Any]:
        """Metadata properties this target adds (``quadexport.runtime``)."""
        return {"quadexport.runtime": self.runtime} if self.runtime else {}

    def open_session(self, path: str | os.PathLike | onnx.ModelProto, provider: str = "cpu", **kwargs: Any) -> Any:
        """An onnxruntime session for a file this target wrote (``kwargs`` go to ``make_session`` and may override
        ``kernel_library``)."""
        from quadexport.exporter.session import make_session

        kwargs.setdefault("kernel_library", self.kernel_library)
        return make_session(path, provider, **kwargs)

    def __repr__(self) -> str:
        return f"<export target {self.name!r}>"


class DecomposedTarget(ExportTarget):
    name = "decomposed"
    description = "standard ONNX ops only (Conv/Gemm, Mul, Add): runs in any runtime"
    legacy_opsets = True
    supports_fp16 = True

    def prepare(self, model: nn.Module, *, stack_linear: bool | None = None) -> Prepared:
        from quadexport.exporter.decomposed import STACK_LINEAR, prepare_decomposed

        prepare_decomposed(model, STACK_LINEAR if stack_linear is None else stack_linear)
        return Prepared()


class FunctionTarget(ExportTarget):
    name = "function"
    description = "one quadexport node per quadratic layer, with a standard-op function body"
    kernel_library = "auto"  # the bodies run unless a node lacks one

    def prepare(self, model: nn.Module, *, stack_linear: bool | None = None) -> Prepared:
        from quadexport.exporter import ops
        from quadexport.exporter.function import prepare_function
        from quadexport.transforms.adopted import scan

        plain = len(scan(model).neurons)
        if plain:
            log.warning("%d quadratic neuron(s) written as plain layers stay standard ops in this %s export; "
                        "quadexport.adopt turns them into quadexport layers", plain, self.name)
        kept = prepare_function(model)
        notes = {"decomposed_layers": [f"{n}: {r}" for n, r in kept]} if kept else {}
        if plain:
            notes["plain_quadratic_neurons"] = plain
        return Prepared(translation_table=ops.translation_table(), notes=notes)

    def validate(self, model: nn.Module) -> None:
        """Refuse a model without quadexport quadratic layers: the file would hold standard ops only, silently (a
        model whose neurons are written as plain layers needs :func:`quadexport.adopt` first)."""
        from quadexport.layers.mixed import MixedQuad
        from quadexport.layers.quad import QuadLayer
        from quadexport.transforms.adopted import scan

        if any(isinstance(m, (QuadLayer, MixedQuad)) for m in model.modules()):
            return
        found = scan(model).neurons
        what = (f"{len(found)} quadratic neuron(s) written as plain layers (e.g. {found[0][0]}: "
                f"{', '.join(found[0][1])})" if found else "no quadexport quadratic layer")
        raise UsageError(f"mode={self.name!r} exports quadexport quadratic layers as custom nodes, and this model has "
                         f"{what}: run quadexport.adopt(model) (CLI: quadexport adopt) first, or export with "
                         f"mode='decomposed'")

    def postprocess(self, proto: onnx.ModelProto) -> dict[str, Any]:
        from quadexport.exporter import lowrank_ops, ops
        from quadexport.exporter.function import attach_functions, quadexport_nodes

        attach_functions(proto)
        n_nodes = len(quadexport_nodes(proto))
        n_low = sum(n.domain == lowrank_ops.DOMAIN for n in proto.graph.node)
        log.debug("%d %s node(s), %d low-rank node(s), function bodies attached", n_nodes, ops.DOMAIN, n_low)
        notes = {"domain": f"{ops.DOMAIN}:{ops.DOMAIN_VERSION}" if n_nodes else None, "quadratic_nodes": n_nodes}
        return {**notes, "lowrank_nodes": n_low} if n_low else notes


class FusedTarget(FunctionTarget):
    name = "fused"
    description = "the function graph, marked to run on the fused kernel library (bodies kept as fallback)"
    kernel_library = "auto"  # with runtime=fused, "auto" registers the library when it is built
    runtime = "fused"

    def prepare(self, model: nn.Module, *, stack_linear: bool | None = None) -> Prepared:
        from quadexport.exporter.function import refuse_unfused

        refuse_unfused(model)  # low-rank layers have no fused kernel: a clear error, not a silent fallback
        return super().prepare(model, stack_linear=stack_linear)


_TARGETS: dict[str, ExportTarget] = {}


def register_export_target(target: ExportTarget) -> ExportTarget:
    """Add a target to the registry (its ``name`` must be new)."""
    if not target.name:
        raise UsageError(f"export target {type(target).__name__} has no name")
    if target.name in _TARGETS:
        raise UsageError(f"export target {target.name!r} is already registered")
    _TARGETS[target.name] = target
    return target


def list_export_targets() -> list[str]:
    """Names of the registered export targets (the valid ``mode=`` values), in registration order."""
    return list(_TARGETS)


def get_export_target(name: str | ExportTarget) -> ExportTarget:
    """The target called ``name`` (a target passes through); unknown names raise :class:`UsageError`."""
    if isinstance(name, ExportTarget):
        return name
    try:
        return _TARGETS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown export mode {name!r}{did_you_mean(name, _TARGETS)}; choose from "
                         f"{', '.join(_TARGETS)}") from None


def check_opset(opset: Any, mode: str | ExportTarget | None = None) -> int:
    """Validate an opset (and, given ``mode``, that the mode can use it); returns it as an int.

    Raises:
        UsageError: not an integer, outside :data:`MIN_OPSET`–:data:`MAX_OPSET`, or a legacy opset (< 18) for a
            mode that needs the dynamo exporter.
    """
    try:
        value = int(opset)
    except (TypeError, ValueError):
        raise UsageError(f"opset must be an integer, got {opset!r}") from None
    if value != opset and not isinstance(opset, str):
        raise UsageError(f"opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= value <= MAX_OPSET:
        raise UsageError(f"opset {value} is out of range: quadexport exports opsets {MIN_OPSET}-{MAX_OPSET} "
                         f"({DYNAMO_OPSETS.start}-{MAX_OPSET} with the dynamo exporter, {MIN_OPSET}-"
                         f"{LEGACY_OPSETS.stop - 1} legacy, decomposed only)")
    if mode is not None:
        target = get_export_target(mode)
        if value < DYNAMO_OPSETS.start and not target.legacy_opsets:
            raise UsageError(f"mode={target.name!r} needs opset >= {DYNAMO_OPSETS.start} (dynamo exporter); got "
                             f"{value} (pass --opset {DEFAULT_OPSET}, or use mode 'decomposed')")
    return value


for _target in (DecomposedTarget(), FunctionTarget(), FusedTarget()):
    register_export_target(_target)
