"""Deploying exported files without the training stack: self-check files for any client, other runtimes.

- :func:`save_io` / :func:`load_io` / :func:`verify_io` (:mod:`quadexport.deploy.saveio`): ``input.npy``,
  ``expected.npy`` and ``io.json`` so a client in any language (``examples/cpp``) can prove parity.
- :func:`check_openvino` (:mod:`quadexport.deploy.openvino`): parity under OpenVINO's CPU plugin (f32, bf16).
- :class:`ParityRow` (:mod:`quadexport.deploy.parity`): one runtime × precision × batch comparison.
"""

from __future__ import annotations

from quadexport.deploy.openvino import OpenVinoNotInstalled, OpenVinoReport, bf16_supported, check_openvino
from quadexport.deploy.parity import BF16_RTOL, TOLERANCES, ParityRow, parity_row, tolerance
from quadexport.deploy.saveio import SavedIO, load_io, save_io, verify_io

__all__ = ["BF16_RTOL", "OpenVinoNotInstalled", "OpenVinoReport", "ParityRow", "SavedIO", "TOLERANCES",
           "bf16_supported", "check_openvino", "load_io", "parity_row", "save_io", "tolerance", "verify_io"]
