"""The runtime registry: :func:`register_runtime`, :func:`list_runtimes`, :func:`get_runtime`.

``check --runtime``, ``bench --runtime``, their ``--help`` and ``quadexport.deploy`` read this registry, so the
runtimes are listed here only. A runtime outside the package reaches the CLI as ``--runtime MODULE:CLASS``: the
module is imported (from ``PYTHONPATH`` or the current directory) and the class (or instance) registered, unless
importing the module registered it already.
"""

from __future__ import annotations

import importlib
import logging

from quadexport.errors import UsageError, did_you_mean
from quadexport.runtimes.base import Runtime

log = logging.getLogger(__name__)

__all__ = ["get_runtime", "list_runtimes", "load_runtime", "register_runtime", "resolve_runtime",
           "unregister_runtime"]

_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    """Add a runtime instance to the registry (its ``name`` must be new); returns it."""
    if not isinstance(runtime, Runtime):
        raise UsageError(f"register_runtime takes a quadexport.runtimes.Runtime instance, got {runtime!r}")
    if not runtime.name:
        raise UsageError(f"runtime {type(runtime).__name__} has no name")
    if runtime.name in _RUNTIMES:
        raise UsageError(f"runtime {runtime.name!r} is already registered ({_RUNTIMES[runtime.name]!r})")
    _RUNTIMES[runtime.name] = runtime
    log.debug("registered runtime %s", runtime.name)
    return runtime


def unregister_runtime(name: str) -> Runtime:
    """Remove a runtime (tests that register their own clean up with this); returns it."""
    try:
        return _RUNTIMES.pop(name)
    except KeyError:
        raise UsageError(f"runtime {name!r} is not registered") from None


def list_runtimes() -> list[str]:
    """Names of the registered runtimes (the valid ``--runtime`` values), in registration order."""
    return list(_RUNTIMES)


def get_runtime(name: str | Runtime) -> Runtime:
    """The runtime called ``name`` (an instance passes through; ``MODULE:CLASS`` is :func:`load_runtime`);
    unknown names raise :class:`UsageError`."""
    if isinstance(name, Runtime):
        return name
    if isinstance(name, str) and ":" in name:
        return load_runtime(name)
    try:
        return _RUNTIMES[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown runtime {name!r}{did_you_mean(name, _RUNTIMES)}; choose from "
                         f"{', '.join(_RUNTIMES)}, or MODULE:CLASS for a runtime of your own") from None


def load_runtime(spec: str) -> Runtime:
    """``MODULE:ATTR`` -> the runtime: ``ATTR`` is a :class:`Runtime` subclass or instance of the importable
    ``MODULE``. It is registered unless a runtime of its name and class already is (a module that registers at
    import)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise UsageError(f"runtime {spec!r}: expected MODULE:CLASS (e.g. myruntimes:MyRuntime)")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise UsageError(f"runtime {spec!r}: cannot import {module} ({e}); is its folder on PYTHONPATH?") from None
    obj = getattr(mod, attr, None)
    cls = obj if isinstance(obj, type) else type(obj)
    if not issubclass(cls, Runtime):
        raise UsageError(f"runtime {spec!r}: {module}.{attr} is {'missing' if obj is None else repr(obj)}, not a "
                         f"quadexport.runtimes.Runtime subclass or instance")
    known = _RUNTIMES.get(cls.name if obj is cls else obj.name)
    if known is not None and (known is obj or type(known) is cls):
        return known
    return register_runtime(obj() if obj is cls else obj)


def resolve_runtime(runtime: str | Runtime | None = None, provider: str = "cpu") -> Runtime:
    """The runtime of a check or bench given ``runtime=`` and the onnxruntime ``provider=`` of earlier versions:
    ``None``/``"onnxruntime"`` with ``provider="cuda"`` is ``onnxruntime-cuda``; another runtime with
    ``provider="cuda"`` is a :class:`UsageError`."""
    if provider not in ("cpu", "cuda"):
        raise UsageError(f"provider must be 'cpu' or 'cuda', got {provider!r}")
    if runtime is None or runtime == "onnxruntime":
        return get_runtime("onnxruntime-cuda" if provider == "cuda" else "onnxruntime")
    rt = get_runtime(runtime)
    if provider == "cuda" and rt.name != "onnxruntime-cuda":
        raise UsageError(f"provider 'cuda' is an onnxruntime option; runtime {rt.name!r} runs where it runs "
                         f"(for onnxruntime on CUDA use runtime 'onnxruntime-cuda')")
    return rt
