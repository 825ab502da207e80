"""Models built by the user's own code: one Python file and a builder function in it (``quadexport adopt``).

The file's text is kept (in the run's checkpoint, with its sha256, and as a copy in the run dir), so a run built
from it loads in a fresh process from anywhere: :func:`import_source` executes that text as a module of its own
(``quadexport_usercode_<sha256 prefix>``, registered in ``sys.modules`` so its classes pickle, trace and print like
any module's), never by putting the user's directory on ``sys.path``. **Loading such a run runs that code**, as
``import`` of the file would.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from quadexport.errors import UsageError

log = logging.getLogger(__name__)

__all__ = ["PREFIX", "UserSource", "build_user_model", "import_source", "is_user_model",
           "model_name", "parse_target", "read_source"]

PREFIX = "adopted:"
"""Model names of user-code models: ``adopted:<file name>:<builder>`` (see :func:`model_name`)."""


@dataclass(frozen=True)
class UserSource:
    """A model file's text, its name (without directory) and the sha256 of its UTF-8 bytes."""

    filename: str
    text: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.filename, "sha256": self.sha256, "text": self.text}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserSource:
        """The source recorded by :meth:`to_dict`, its checksum verified.

        Raises:
            UsageError: the record is incomplete, or its text does not match its sha256 (edited or corrupt).
        """
        try:
            src = cls(str(d["file"]), str(d["text"]), str(d["sha256"]))
        except (KeyError, TypeError):
            raise UsageError("the run's model source record lacks its file, text or sha256") from None
        actual = _sha256(src.text)
        if actual != src.sha256:
            raise UsageError(f"the recorded model source {src.filename} does not match its sha256 "
                             f"({actual[:12]}... vs {src.sha256[:12]}...): edited or corrupt; re-run quadexport adopt")
        return src


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_user_model(name: object) -> bool:
    """Whether ``name`` names a model built by user code (``adopted:<file>:<builder>``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def model_name(filename: str, builder: str) -> str:
    """``adopted:<file name>:<builder>``: the registry name recorded for a user-code model."""
    return f"{PREFIX}{filename}:{builder}"


def parse_target(target: str) -> tuple[Path, str]:
    """``FILE.py:BUILDER`` → ``(path, builder)``.

    Raises:
        UsageError: no ``:BUILDER``, a builder that is not an identifier, or a file that is not a ``.py`` file.
    """
    path, sep, builder = str(target).rpartition(":")
    if not sep or not path or not builder.isidentifier():
        raise UsageError(f"{target!r} must be FILE.py:BUILDER, e.g. models/qresnet.py:qresnet20")
    p = Path(path)
    if p.suffix != ".py":
        raise UsageError(f"{path} is not a Python file (FILE.py:BUILDER)")
    if not p.is_file():
        raise UsageError(f"no model file {path}")
    return p, builder


def read_source(path: str | os.PathLike) -> UserSource:
    """Read a model file (UTF-8) with its sha256."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return UserSource(p.name, text, _sha256(text))


def import_source(src: UserSource) -> types.ModuleType:
    """Execute ``src`` as a module (once per process and checksum; later calls return the same module).

    Raises:
        UsageError: the code does not compile or raises while it runs (e.g. it imports a module that is not
            installed, or a sibling file: only this one file is kept).
    """
    name = f"quadexport_usercode_{src.sha256[:16]}"
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    mod = types.ModuleType(name)
    mod.__file__ = f"<quadexport adopt: {src.filename}>"
    sys.modules[name] = mod  # before exec: classes defined in it resolve their module (dataclasses, pickling)
    try:
        exec(compile(src.text, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - the user's own model file
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, ModuleNotFoundError):
            raise UsageError(f"{src.filename} imports {e.name!r}, which is not installed or is a file beside it "
                             f"(only {src.filename} itself is kept: put the model in one file)") from e
        if isinstance(e, Exception):
            raise UsageError(f"running {src.filename} failed: {type(e).__name__}: {e}") from e
        raise
    log.debug("imported %s (sha256 %s) as %s", src.filename, src.sha256[:12], name)
    return mod


def build_user_model(src: UserSource, builder: str, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """``BUILDER(**model_args)`` from the user's file (executed by :func:`import_source`).

    Raises:
        UsageError: no such function, arguments it does not take, or it does not return an ``nn.Module``.
    """
    mod = import_source(src)
    fn = getattr(mod, builder, None)
    if not callable(fn):
        known = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == mod.__name__)
        raise UsageError(f"{src.filename} has no function {builder!r} (it defines: {', '.join(known[:8]) or '-'})")
    kwargs = dict(model_args or {})
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise UsageError(f"{src.filename}:{builder} does not take these --model-arg options ({e})") from None
    except ValueError:  # no signature (builtins): let the call decide
        pass
    try:
        model = fn(**kwargs)
    except Exception as e:
        raise UsageError(f"{src.filename}:{builder}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"{src.filename}:{builder} returned a {type(model).__name__}, not a torch nn.Module")
    return model
