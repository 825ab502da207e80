"""Export time, peak memory and file sizes of ONNX export by model size (docs/export.md, "Big models").

Each case runs in its own process (``--child``), so the peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
is that case's alone. A child builds the model untrained (quadratic branches perturbed, so parity is not trivial),
then

1. exports it (``quadexport.export``, decomposed, opset 20; weights as external data above 1.8 GB) and records the
   wall time of each phase (BN folding, torch export = tracing + translation + writing the weights, saving the
   ``.onnx``, ``onnx.checker``) and the peak RSS so far (the export's peak, the model itself included);
2. opens the file in plain onnxruntime (``InferenceSession(path)``, defaults) and compares a batch of 2 with torch
   (rel_l2);
3. runs ``quadexport.check`` (batches 1 and 3, ``ORT_DISABLE_ALL`` and ``ORT_ENABLE_ALL``, random inputs) and
   records the peak RSS again (the whole process: model + export + check).

Cases: ``resnet50`` (torchvision ResNet-50 quadratized, 72 M parameters), ``convnext_large`` (torchvision
ConvNeXt-L, 198 M, quadratized: ~0.6 B), ``linear3x8192`` (three ``QuadLinear(8192, 8192, neuron="fan")``, 604 M,
2.4 GB). The big cases need ~10 GB of free memory; run them one at a time.

Usage:
    .venv/bin/python tools/bigmodel_bench.py [CASE ...] [--json out.json] [--keep DIR] [--profile]
        [--compare OTHER_CHECKOUT --rounds N]
    (no CASE: all three; --profile: the top cumulative-time functions of the export, cProfile; --compare: the same
    cases with another checkout's quadexport, alternating, e.g. the code before this change)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

CASES = ("resnet50", "convnext_large", "linear3x8192")
HERE = str(Path(__file__).resolve().parents[1])


def _rss_peak() -> int:
    """Peak resident set size of this process so far, bytes (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def build(case: str):
    """``(model, input_shape)``: the case's model, untrained, eval mode, quadratic branches perturbed."""
    import torch

    import quadexport as q
    from quadexport.layers import QuadLinear
    from quadexport.layers.init import perturb_quadratic

    torch.manual_seed(0)
    scale = 1e-3  # deep untrained nets: larger quadratic terms compound to inf over 50 layers
    if case == "resnet50":
        model, shape = q.create_model("torchvision:resnet50", neuron="fan", num_classes=1000, in_channels=3,
                                      input_size=224), (3, 224, 224)
    elif case == "convnext_large":
        model, shape = q.create_model("torchvision:convnext_large", neuron="fan", num_classes=1000, in_channels=3,
                                      input_size=224), (3, 224, 224)
    elif case == "linear3x8192":
        model, shape = torch.nn.Sequential(*(QuadLinear(8192, 8192, neuron="fan") for _ in range(3))), (8192,)
        scale = 0.02
    else:
        raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    g = torch.Generator().manual_seed(1)
    perturb_quadratic(model, scale, generator=g, scale="fan_in")  # small: the quadratic terms matter a little
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
    model.eval()
    model.quadexport_meta = {"input_shape": list(shape)}
    return model, shape


class _Phases:
    """Wall time of the export's phases, by wrapping the functions ``quadexport.exporter.api`` calls."""

    def __init__(self) -> None:
        import onnx

        from quadexport.exporter import api

        self.times: dict[str, float] = {}
        self._wrap(api, "fold_batchnorm", "fold")
        self._wrap(api, "_torch_export", "torch_export")
        try:
            from quadexport.exporter import extdata

            self._wrap(extdata, "save_proto", "save")
        except ImportError:  # --compare with a checkout from before external data: onnx.save is the save
            self._wrap(onnx, "save", "save")
        self._wrap(onnx.checker, "check_model", "checker")

    def _wrap(self, owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed)


def child(case: str, out_dir: Path, profile: bool) -> dict:
    import torch

    from quadexport.check import check
    import quadexport
    from quadexport.exporter import export

    try:
        from quadexport.exporter.extdata import external_files
    except ImportError:  # --compare: an older checkout
        def external_files(path):
            return [p for p in path.parent.glob(path.name + ".*") if p.is_file()]

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    model, shape = build(case)
    n_params = sum(p.numel() for p in model.parameters())
    pbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    res = {"case": case, "code": str(Path(quadexport.__file__).parents[1]), "params": n_params, "param_bytes": pbytes, "build_s": time.perf_counter() - t0,
           "rss_model": _rss_now(), "torch_threads": torch.get_num_threads()}
    phases = _Phases()
    path = out_dir / f"{case}.onnx"
    t0 = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(export, model, path)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(35)
    else:
        export(model, path)
    res["export_s"] = time.perf_counter() - t0
    res["phases_s"] = dict(phases.times)
    res["peak_rss_export"] = _rss_peak()
    res["onnx_bytes"] = path.stat().st_size
    res["data_bytes"] = sum(p.stat().st_size for p in external_files(path))
    res["data_files"] = [p.name for p in external_files(path)]
    res.update(_plain_ort(model, path, shape))
    t0 = time.perf_counter()
    report = check(path, model, batches=(1, 3), opt_levels=("disable", "all"), dataset=False, verbose=False)
    res["check_s"] = time.perf_counter() - t0
    res["check_ok"] = report.ok
    res["check_worst_rel_l2"] = max((ln.rel_l2 for ln in report.lines), default=float("nan"))
    res["check_lines"] = len(report.lines)
    res["peak_rss_total"] = _rss_peak()
    res["loadavg_1min"] = os.getloadavg()[0]  # the machine is shared: times are only comparable at similar load
    return res


def _plain_ort(model, path: Path, shape) -> dict:
    """Plain onnxruntime (no quadexport helper): the file opened by path, a batch of 2 against torch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    rel = float(np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64)))
    del sess
    return {"ort_load_s": load_s, "ort_rel_l2": rel}


def _row(r: dict) -> str:
    gb = 1e9
    ph = r["phases_s"]
    return (f"| {r['case']}{'' if r.get('code') == HERE else ' (' + Path(r.get('code', '?')).name + ')'} | {r['params'] / 1e6:.0f} M | {r['param_bytes'] / gb:.2f} GB | {r['export_s']:.1f} s "
            f"(fold {ph.get('fold', 0):.1f}, torch export {ph.get('torch_export', 0):.1f}, save "
            f"{ph.get('save', 0):.1f}, checker {ph.get('checker', 0):.1f}) | {r['peak_rss_export'] / gb:.2f} GB "
            f"({r['peak_rss_export'] / r['param_bytes']:.2f}×) | {r['onnx_bytes'] / 1e6:.2f} MB + "
            f"{r['data_bytes'] / gb:.2f} GB | {r['ort_rel_l2']:.1e} | {'pass' if r['check_ok'] else 'FAIL'} "
            f"({r['check_worst_rel_l2']:.1e}, {r['check_s']:.0f} s) | {r['peak_rss_total'] / gb:.2f} GB | "
            f"{r['loadavg_1min']:.1f} |")


HEADER = ("| case | parameters | fp32 bytes | export time (phases) | export peak RSS (× params) | .onnx + .data | "
          "plain ORT rel_l2 | check | process peak RSS | load |\n|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", metavar="CASE", help=f"{', '.join(CASES)} (default: all)")
    ap.add_argument("--json", default=None, help="also write the results there")
    ap.add_argument("--keep", default=None, help="write the ONNX files there (default: a temporary folder)")
    ap.add_argument("--profile", action="store_true", help="cProfile the export (stderr)")
    ap.add_argument("--compare", default=None, metavar="CHECKOUT",
                    help="also run each case with the quadexport of another checkout (e.g. the main branch), "
                         "alternating with this one, --rounds times")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of --compare (default: 1)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(a.child, Path(a.out), a.profile)), flush=True)
        return 0
    bad = [c for c in a.cases if c not in CASES]
    if bad:
        ap.error(f"unknown case {bad[0]!r}; choose from {', '.join(CASES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bigmodel-") as tmp:
        trees = [HERE] if not a.compare else [str(Path(a.compare).resolve()), HERE] * max(1, a.rounds)
        for case, tree in [(c, t) for c in (a.cases or CASES) for t in trees]:
            out = Path(a.keep or tmp)
            out.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, "--child", case, "--out", str(out)] + (["--profile"] if a.profile else [])
            t0 = time.perf_counter()
            env = {**os.environ, "PYTHONPATH": tree + os.pathsep + os.environ.get("PYTHONPATH", "")}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            sys.stderr.write(proc.stderr[-6000:] if a.profile or proc.returncode else "")
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{case}: failed (exit {proc.returncode}) after {time.perf_counter() - t0:.0f} s")
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            results.append(r)
            if not a.keep:
                for p in out.glob(f"{case}.onnx*"):
                    p.unlink()
            print(json.dumps(r), flush=True)
    print(HEADER)
    for r in results:
        print(_row(r))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0 if results and all(r["check_ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
