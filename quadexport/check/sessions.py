"""Sessions of a check, opened one at a time for big models.

``check`` runs every input set through one onnxruntime session per opt level (× kernel/bodies). Each session holds
its own copy of the weights (plus packed GEMM weights at ``ORT_ENABLE_ALL``), so for a model of several GB the
eagerly opened dict would need several copies at once. :class:`OneAtATime` is the same mapping, but each session is
created when it is reached and released before the next one is created: memory stays at one session's worth.
"""

from __future__ import annotations

import gc
import logging
from typing import Any, Callable, Iterator, Mapping

log = logging.getLogger(__name__)

Key = tuple[str, str]

__all__ = ["OneAtATime"]


class OneAtATime(Mapping[Key, Any]):
    """``(opt level, runtime label) -> session``, created on access, one alive at a time.

    Args:
        keys: the sessions to provide, in order.
        open_session: creates the session of a key.
        on_error: called with ``(key, exception)`` when a session cannot be created; the key is then dropped.
    """

    def __init__(self, keys: list[Key], open_session: Callable[[Key], Any],
                 on_error: Callable[[Key, Exception], None]) -> None:
        self._keys = list(keys)
        self._open = open_session
        self._on_error = on_error
        self._key: Key | None = None
        self._session: Any = None
        while self._keys and self._try(self._keys[0]) is None:  # the first usable one now: `if sessions:` is right
            pass

    def _try(self, key: Key) -> Any:
        try:
            return self[key]
        except Exception as e:  # noqa: BLE001 - any failure to create a session is reported by the caller
            self._keys.remove(key)
            self._on_error(key, e)
            return None

    def __getitem__(self, key: Key) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        if self._key != key:
            self._key, self._session = None, None  # release the previous session before creating the next
            gc.collect()
            self._session = self._open(key)
            self._key = key
            log.debug("session %s opened (one at a time)", key)
        return self._session

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def items(self) -> Iterator[tuple[Key, Any]]:  # type: ignore[override]
        for key in list(self._keys):
            sess = self._try(key)
            if sess is not None:
                yield key, sess

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        for _, sess in self.items():
            yield sess
