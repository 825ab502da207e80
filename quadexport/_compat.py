"""Imports of optional third-party packages that need care (lowest layer: imports nothing from quadexport).

torchvision's PyPI wheels for x86-64 are built against CUDA torch; beside a CPU build of torch their compiled
extension cannot load, and ``import torchvision`` then fails in ``_meta_registrations`` with "operator
torchvision::nms does not exist". The model builders, transforms and datasets quadexport uses need no compiled op,
so when (and only when) the extension cannot load, :func:`import_torchvision` declares the two operator schemas that
module registers fake kernels for, and the import goes through. Detection ops (``torchvision.ops.nms``...) then raise
if called; nothing in quadexport calls them.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

_log = logging.getLogger(__name__)
_SHIM_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                 "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_shim_lib = None  # keeps the torch.library.Library alive


def _extension_loads(pkg_dir: Path) -> bool:
    import torch

    lib = next(iter(sorted(pkg_dir.glob("_C*.so"))), None)
    if lib is None:
        return False
    try:
        torch.ops.load_library(str(lib))
    except (OSError, RuntimeError):
        return False
    return True


def import_torchvision() -> ModuleType:
    """``import torchvision``, working around a wheel whose compiled ops cannot load beside this torch.

    Raises:
        ImportError: torchvision is not installed.
    """
    global _shim_lib
    import sys

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed (pip install torchvision, the release paired with your torch)")
    import torch

    has_nms = True
    try:
        torch.ops.torchvision.nms  # noqa: B018  (already defined by an earlier load)
    except (AttributeError, RuntimeError):
        has_nms = False
    if not has_nms and not _extension_loads(Path(next(iter(spec.submodule_search_locations)))):
        _log.debug("torchvision's compiled ops do not load beside torch %s; declaring nms/qnms schemas",
                   torch.__version__)
        _shim_lib = torch.library.Library("torchvision", "DEF")
        for schema in _SHIM_SCHEMAS:
            _shim_lib.define(schema)
    return importlib.import_module("torchvision")


def import_timm() -> ModuleType:
    """``import timm`` (which imports torchvision: see :func:`import_torchvision`)."""
    import_torchvision()
    return importlib.import_module("timm")


def torchvision_ops_missing(e: BaseException, what: str) -> Exception | None:
    """A one-line :class:`~quadexport.errors.UsageError` when ``e`` is torchvision's "Couldn't load custom C++ ops"
    (a detector's post-processing calls ``nms``/``roi_align``, which this torchvision build cannot run), else None.

    ``what``: the model, as the message names it."""
    if not (isinstance(e, RuntimeError) and "custom C++ ops" in str(e)):
        return None
    from quadexport.errors import UsageError

    return UsageError(f"{what} calls torchvision's compiled ops (nms/roi_align: a detector's post-processing), which "
                      "cannot load beside this torch build; quadratize and export its backbone and head without the "
                      "post-processing (docs/export.md, 'Detection')")
