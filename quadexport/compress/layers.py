"""Layers of compressed models; they live in :mod:`quadexport.layers.mixed` (re-exported here)."""

from quadexport.layers.mixed import SPLITS, MixedQuad, PermShortcut, copy_rows, copy_rows_part, like

__all__ = ["MixedQuad", "PermShortcut", "SPLITS", "copy_rows", "copy_rows_part", "like"]
