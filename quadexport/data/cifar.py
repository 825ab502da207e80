"""Reading CIFAR-10's python pickles safely: a restricted unpickler that only rebuilds numpy arrays, lists and
dicts (a pickle from elsewhere cannot run code), and the batch parser with one-line errors."""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quadexport.data.errors import CorruptDataError


def _file_key(path: Path) -> tuple[str, int, int]:
    """Cache key of a file: resolved path, mtime, size (a changed file is read again)."""
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 protocol-2 pickles use for ``bytes``; latin-1 only."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's ``_reconstruct`` (protocol < 5)
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy's ``_frombuffer`` (protocol 5)

# The only globals a CIFAR batch (a dict of bytes, lists and uint8 arrays) needs. Real batches were written by
# Python 2 and name ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``; the rest admit
# copies re-pickled by numpy 2 / Python 3 (protocol 2 spells bytes as ``_codecs.encode(str, 'latin1')``).
_SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` only resolves :data:`_SAFE_GLOBALS`; it never imports anything."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch only holds numpy arrays, "
                                         "lists and bytes, so this is not a genuine batch") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def _unpickle(path: Path) -> Any:
    """Load ``path`` with :class:`_RestrictedUnpickler`; any failure becomes a ``ValueError`` naming the file."""
    data = path.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # corrupt pickles raise many types (EOFError, KeyError, struct.error, ...)
        raise CorruptDataError(f"{path}: cannot load CIFAR batch: {type(e).__name__}: {e}") from e


def _batch_field(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise CorruptDataError(f"{path}: CIFAR batch has no {key!r} entry (keys: {sorted(map(repr, batch))})")


def _parse_cifar_batch(batch: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n,3,32,32) uint8, labels (n,) int64)`` from an unpickled batch dict, validated."""
    if not isinstance(batch, dict):
        raise CorruptDataError(f"{path}: CIFAR batch is a {type(batch).__name__}, expected a dict")
    data, labels = _batch_field(batch, "data", path), _batch_field(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDataError(f"{path}: 'data' is {desc}, expected a uint8 array of shape (n, 3072)")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise CorruptDataError(f"{path}: 'labels' is not a list of integers") from e
    if y.shape != (len(data),):
        raise CorruptDataError(f"{path}: {len(data)} images but 'labels' has shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= 10):
        raise CorruptDataError(f"{path}: labels outside [0, 10)")
    return data.reshape(-1, 3, 32, 32), y


@functools.lru_cache(maxsize=8)
def _read_cifar_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    del mtime_ns, size  # part of the cache key only
    x, y = _parse_cifar_batch(_unpickle(Path(path)), Path(path))
    _readonly(x, y)
    return x, y


def _read_cifar_files(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    parts = [_read_cifar_cached(*_file_key(p)) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
