"""State dicts as training scripts save them: reading a checkpoint file safely and fitting it to a model.

Research code saves checkpoints in a handful of layouts, all read here:

* a bare state dict (``torch.save(model.state_dict(), f)``);
* a dict holding it under ``state_dict``, ``model``, ``model_state_dict`` or ``net``
  (``torch.save({'epoch': e, 'state_dict': ..., 'best_prec1': ...}, 'model.th')``), other entries ignored;
* keys prefixed ``module.`` (``nn.DataParallel`` / DDP) or ``_orig_mod.`` (``torch.compile``), in any nesting;
  a prefix is stripped only when every key has it and the model's own keys do not.

Files are read with ``torch.load(weights_only=True)``: no code runs. The harmless extras such checkpoints pickle
beside the tensors are allowed by name (:data:`SAFE_GLOBALS`): ``argparse.Namespace`` (the training arguments),
numpy scalars and dtypes (``best_prec1`` as ``np.float64``). Anything else is refused in one line naming the type;
``trust=True`` (``--trust-checkpoint``) unpickles the file as it is, which can run arbitrary code from it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from quadexport.errors import QuadexportError

log = logging.getLogger(__name__)

__all__ = ["CONTAINER_KEYS", "LoadedStateDict", "PREFIXES", "WeightsError", "fit_state_dict", "load_into",
           "read_state_dict", "safe_globals", "strip_prefixes"]

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")
"""Keys under which training scripts store the state dict inside a checkpoint dict (looked up in this order)."""
PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes added by wrappers: ``nn.DataParallel``/DDP and ``torch.compile``."""


class WeightsError(QuadexportError, ValueError):
    """A weights file that cannot be read safely, holds no state dict, or does not fit the model."""


@dataclass
class LoadedStateDict:
    """A state dict read from a checkpoint file, and how it was found.

    Attributes:
        state: parameter/buffer name → tensor (prefixes not yet stripped: that needs the model).
        path: the file.
        container: the key it was found under (``"state_dict"``...), ``None`` for a bare state dict.
        others: the other top-level keys of a checkpoint dict (``epoch``, ``best_prec1``, ``args``...).
        stripped: the wrapper prefixes removed by :func:`fit_state_dict` (``["module."]``).
    """

    state: dict[str, torch.Tensor]
    path: str
    container: str | None = None
    others: list[str] = field(default_factory=list)
    stripped: list[str] = field(default_factory=list)


def safe_globals() -> list[Any]:
    """The non-tensor types a checkpoint may pickle and still load weights-only: ``argparse.Namespace``, numpy
    scalars (``numpy.core.multiarray.scalar`` under its numpy 1 and 2 names), ``numpy.dtype`` and its subclasses."""
    out: list[Any] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # no numpy: a checkpoint holding numpy values cannot be one written without it
        return out
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    out += [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one dtype class per type (BUILD checks the class)
    if dtypes is not None:
        out += sorted({v for v in vars(dtypes).values() if isinstance(v, type) and issubclass(v, np.dtype)},
                      key=lambda t: t.__name__)
    return out


_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+) was not an allowed global|got <class '([\w.]+)'>|"
                          r"unrecognized function ([^\s]+)")


def _refused_type(path: str | os.PathLike, err: Exception) -> str | None:
    """The type a weights-only load refused: from torch's scan of the pickle, else from the error's text."""
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in allowed]
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be scanned; the error text still names it
        names = []
    if names:
        return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    m = _UNSUPPORTED.search(str(err))
    return next((g for g in m.groups() if g), None) if m else None


def _torch_load(path: str | os.PathLike, trust: bool, trust_option: str | None) -> Any:
    if trust:
        log.warning("unpickling %s with weights_only=False (--trust-checkpoint): it may run arbitrary code", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (ImportError, AttributeError) as e:  # a pickled class whose module or name is not importable here
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WeightsError(f"{path} pickles a class that cannot be imported here ({type(e).__name__}: {first}); "
                               f"re-save its state dict alone where that class imports: torch.save("
                               f"model.state_dict(), FILE)") from None
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling errors, truncated files
        refused = _refused_type(path, e) if "Weights only load failed" in str(e) else None
        if refused is not None:
            how = (f"if you trust the file, pass {trust_option} (it unpickles arbitrary code)" if trust_option
                   else "re-save its state dict alone: torch.save(model.state_dict(), FILE)")
            raise WeightsError(f"{path} pickles {refused}, which a weights-only load refuses; {how}") from None
        first = str(e).splitlines()[0] if str(e) else repr(e)
        raise WeightsError(f"{path} is not a loadable checkpoint ({first})") from None


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_state_dict(path: str | os.PathLike, trust: bool = False,
                    trust_option: str | None = "--trust-checkpoint") -> LoadedStateDict:
    """Read the state dict of a checkpoint file in any of the layouts above.

    Args:
        path: the checkpoint file.
        trust: unpickle without ``weights_only`` (runs any code the file holds).
        trust_option: how the refusal names the way to trust the file (``None``: tell the user to re-save it).

    Raises:
        WeightsError: unreadable file, a pickled type outside :func:`safe_globals` (named), or no state dict in it.
    """
    obj = _torch_load(path, trust, trust_option)
    if isinstance(obj, nn.Module):  # torch.save(model): only reachable with trust
        obj = obj.state_dict()
    container, others = None, []
    if isinstance(obj, Mapping) and not _is_state(obj):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_state(inner):
                container, others = key, [str(k) for k in obj if k != key]
                obj = inner
                break
    if not _is_state(obj):
        keys = f" (its keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, Mapping) else ""
        raise WeightsError(f"{path} holds no state dict (name -> tensor) bare or under "
                           f"{' / '.join(CONTAINER_KEYS)}{keys}")
    log.debug("%s: state dict%s, %d tensors", path, f" under {container!r}" if container else "", len(obj))
    return LoadedStateDict(dict(obj), str(path), container, others)


def strip_prefixes(state: Mapping[str, torch.Tensor], own: set[str] | None = None
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes (:data:`PREFIXES`) that every key carries, as often as they nest, unless the
    model's own keys ``own`` carry them too. Returns ``(state, prefixes removed)``."""
    state, removed = dict(state), []
    while True:
        p = next((p for p in PREFIXES if state and all(k.startswith(p) for k in state)), None)
        if p is None or (own is not None and own and all(k.startswith(p) for k in own)):
            return state, removed
        state = {k[len(p):]: v for k, v in state.items()}
        removed.append(p)


def _few(names: list[str]) -> str:
    return f"{len(names)}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def fit_state_dict(model: nn.Module, loaded: LoadedStateDict) -> dict[str, torch.Tensor]:
    """The state of ``loaded`` with wrapper prefixes stripped, checked to fit ``model`` exactly.

    Raises:
        WeightsError: missing, unexpected or wrongly shaped keys (a few of each named), in one line.
    """
    own = model.state_dict()
    state, loaded.stripped = strip_prefixes(loaded.state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{what} {_few(x)}" for x, what in ((missing, "missing"), (unexpected, "unexpected"),
                                                   (wrong, "of another shape")) if x]
        raise WeightsError(f"{loaded.path} does not fit the model ({'; '.join(parts)}); are the builder and its "
                           f"--model-arg options the ones it was trained with?")
    return state


def load_into(model: nn.Module, path: str | os.PathLike, trust: bool = False) -> LoadedStateDict:
    """Read ``path`` (:func:`read_state_dict`) and load it into ``model`` strictly; returns what was read."""
    loaded = read_state_dict(path, trust)
    model.load_state_dict(fit_state_dict(model, loaded), strict=True)
    return loaded
