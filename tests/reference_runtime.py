"""A runtime of the tests' own (not built in): onnx's reference evaluator. tests/test_runtimes.py registers it
through the API and reaches it from the CLI as ``--runtime reference_runtime:ReferenceRuntime``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quadexport.runtimes import Runtime, Session, Setting, Support, file_io


class ReferenceRuntime(Runtime):
    """``onnx.reference.ReferenceEvaluator``: standard ops in NumPy; inlines the function bodies of function files.
    ``runs`` counts the batches it ran (the tests assert the check really went through it)."""

    name = "onnx-reference"
    title = "onnx.reference"
    description = "onnx's reference evaluator (NumPy), decomposed and function files"

    def __init__(self) -> None:
        self.runs = 0

    def supports(self) -> Support:
        import onnx

        return Support(modes=("decomposed", "function"), dtypes=("float32",), version=onnx.__version__)

    def open(self, path, setting: Setting = Setting()) -> Session:
        from onnx.reference import ReferenceEvaluator

        io = file_io(path)
        return Session(self, Path(path), setting, ReferenceEvaluator(str(path)), io.input_names, io.output_names,
                       devices=["onnx.reference"])

    def run(self, session: Session, inputs) -> list[np.ndarray]:
        self.runs += 1
        return [np.asarray(o) for o in session.handle.run(None, session.feed(inputs))]
