"""``--image-size`` for in-memory datasets (built-in, ``npz:``): resize the raw pixels with PIL bilinear, as
``imagefolder:`` resizes its files and as a deployer resizes an image before feeding the exported model; the run's
:class:`~quadexport.data.preprocess.Preprocessing` records the size and ``resize`` (:data:`RESIZE`)."""

from __future__ import annotations

import numpy as np

from quadexport.errors import UsageError

RESIZE = "PIL bilinear"
"""How a run resizes images of another size (recorded in its preprocessing and the ONNX metadata)."""

__all__ = ["RESIZE", "resize_images"]


def resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Raw ``(N, C, H, W)`` images resized to ``size = (height, width)`` with PIL bilinear (``x`` itself when it is
    that size already).

    ``uint8`` images stay ``uint8`` (PIL modes ``L`` / ``RGB``, rounded as PIL rounds them); float images are resized
    per channel as ``float32`` (mode ``F``).

    Raises:
        UsageError: ``size`` is not two positive integers.
    """
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise UsageError(f"--image-size must be positive, got {h}x{w}")
    if tuple(x.shape[2:]) == (h, w):
        return x
    from PIL import Image

    n, c = x.shape[:2]
    rgb = x.dtype == np.uint8 and c == 3
    out = np.empty((n, c, h, w), dtype=np.uint8 if x.dtype == np.uint8 else np.float32)
    for i in range(n):
        if rgb:
            img = Image.fromarray(np.ascontiguousarray(x[i].transpose(1, 2, 0)), "RGB")
            out[i] = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
            continue
        for j in range(c):
            plane = np.ascontiguousarray(x[i, j] if x.dtype == np.uint8 else x[i, j].astype(np.float32))
            out[i, j] = np.asarray(Image.fromarray(plane).resize((w, h), Image.Resampling.BILINEAR))
    return out
