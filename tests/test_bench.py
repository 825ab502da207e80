"""``quadexport bench``: report schema, baseline pairing, ratio bookkeeping, files, CLI errors.

No timing assertions: the numbers depend on the machine. Runs are kept tiny (min_iters 3, min_seconds 0.01,
1×8×8 inputs, a width-8 MLP) so the module stays well under a minute; the ONNX exports dominate.
"""

import json
import logging
import math

import pytest
import torch

import quadexport as q
from quadexport.bench import (ONNX_MODES, RATIO_KEYS, ROW_KEYS, BenchError, BenchModel, _resolve_models,
                              _zoo_macs, bench, mac_matched_baseline, parse_input_shape)
from quadexport.runs.checkpoint import save_checkpoint
from quadexport.cli import main

SHAPE = (1, 8, 8)
FAST = dict(batches=(1, 3), warmup=1, min_iters=3, min_seconds=0.01, threads=1)


def _run_dir(path, name, neuron, acc, **kw):
    torch.manual_seed(0)
    model = q.create_model(name, neuron, in_channels=1, input_size=8, **kw).eval()
    save_checkpoint(path, model, {"input_shape": list(SHAPE), "test_acc": acc, "dataset": "digits"})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-runs")
    return (_run_dir(root / "mlp-w8-fan", "mlp", "fan", 0.91, width=8),
            _run_dir(root / "mlp-w8-relu", "mlp", "relu", 0.88, width=8))


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    rep = bench([str(r) for r in runs], mode=["decomposed", "function"], out=out, **FAST)
    return rep, out


def _finite_pos(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_report_schema(report):
    rep, out = report
    d = json.loads((out / "bench.json").read_text())
    assert set(d) >= {"rows", "ratios", "config", "environment", "ort_vs_torch", "mode_ratios", "models"}
    assert d["rows"] and d["ratios"]
    for r in d["rows"]:
        assert set(ROW_KEYS) <= set(r), set(ROW_KEYS) - set(r)
        assert isinstance(r["model"], str) and isinstance(r["neuron"], str) and isinstance(r["mode"], str)
        assert r["role"] in ("quadratic", "twin", "mac_matched", "relu")
        assert r["provider"] == "cpu" and r["threads"] == 1 and r["batch"] in (1, 3)
        for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "macs", "params"):
            assert _finite_pos(r[k]), (k, r[k])
        assert math.isfinite(r["stdev_ms"]) and r["stdev_ms"] >= 0
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["min_ms"] <= r["p50_ms"] and math.isfinite(r["cpu_p50_ms"]) and r["cpu_p50_ms"] >= 0
        assert r["iters"] >= 3
        assert r["throughput"] == pytest.approx(r["batch"] / (r["mean_ms"] / 1e3))
        if r["mode"] in ONNX_MODES:
            assert isinstance(r["file_bytes"], int) and r["file_bytes"] > 0
        else:
            assert r["mode"] == "torch" and r["file_bytes"] is None
    for x in d["ratios"]:
        assert set(RATIO_KEYS) <= set(x)
        assert _finite_pos(x["latency_ratio"]) and _finite_pos(x["mac_ratio"])
    env = d["environment"]
    for k in ("cpu", "cpu_count", "threads", "torch", "onnx", "onnxruntime", "numpy", "provider", "opt_level",
              "load_average", "date", "ep"):
        assert k in env, k
    assert env["ep"] == ["CPUExecutionProvider"]
    cfg = d["config"]
    assert cfg["warmup"] == 1 and cfg["min_iters"] == 3 and cfg["modes"] == ["decomposed", "function", "torch"]
    assert cfg["input_shape"] == list(SHAPE)


def test_rows_cover_models_modes_and_batches(report):
    rep, _ = report
    got = {(r.id, r.mode, r.batch) for r in rep.rows}  # typed rows (BenchRow)
    quad = "mlp-w8-fan"
    for b in (1, 3):
        for m in ("decomposed", "function", "torch"):
            assert (quad, m, b) in got
        # ReLU models: one ONNX graph whatever the mode (timed as decomposed) plus torch eager
        for base in ("mlp-w8-relu",):
            assert (base, "decomposed", b) in got and (base, "torch", b) in got
            assert (base, "function", b) not in got
    roles = {r.id: r.role for r in rep.rows}
    assert roles["mlp-w8-fan"] == "quadratic" and roles["mlp-w8-relu"] == "twin"
    mm = [i for i, role in roles.items() if role == "mac_matched"]
    assert len(mm) == 1 and mm[0].startswith("mlp-w")
    # run dirs keep their accuracies; the built MAC-matched model has none
    accs = {r.id: r.test_acc for r in rep.rows}
    assert accs["mlp-w8-fan"] == 0.91 and accs["mlp-w8-relu"] == 0.88 and accs[mm[0]] is None


def test_ratios_consistent_with_rows(report):
    rep, _ = report
    d = rep.to_dict()  # the bench.json keys of the typed rows and ratios
    idx = {(r["id"], r["mode"], r["batch"]): r for r in d["rows"]}
    macs = {r["id"]: r["macs"] for r in d["rows"]}
    seen = set()
    for x in d["ratios"]:
        qr = idx[(x["quadratic"], x["mode"], x["batch"])]
        br = idx[(x["baseline"], x["baseline_mode"], x["batch"])]
        assert x["latency_ratio"] == pytest.approx(qr["p50_ms"] / br["p50_ms"])
        assert x["mac_ratio"] == pytest.approx(macs[x["quadratic"]] / macs[x["baseline"]])
        assert x["min_latency_ratio"] == pytest.approx(qr["min_ms"] / br["min_ms"])
        if x["cpu_ratio"] is not None:  # process CPU time; may read 0 for a µs-scale run on a coarse clock
            assert x["cpu_ratio"] == pytest.approx(qr["cpu_p50_ms"] / br["cpu_p50_ms"])
        assert x["baseline_mode"] == ("torch" if x["mode"] == "torch" else "decomposed")
        seen.add((x["role"], x["mode"], x["batch"]))
    for role in ("twin", "mac_matched"):
        for m in ("decomposed", "function", "torch"):
            for b in (1, 3):
                assert (role, m, b) in seen
    # Fan: three branches → MAC ratio vs the twin close to 3; the MAC-matched model is close to 1
    twin = next(x for x in d["ratios"] if x["role"] == "twin")
    mm = next(x for x in d["ratios"] if x["role"] == "mac_matched")
    assert 2.5 < twin["mac_ratio"] < 3.1
    assert abs(mm["mac_ratio"] - 1) < abs(twin["mac_ratio"] - 1)
    for x in d["ort_vs_torch"]:
        assert x["ratio"] == pytest.approx(idx[(x["model"], x["mode"], x["batch"])]["p50_ms"]
                                           / idx[(x["model"], "torch", x["batch"])]["p50_ms"])
    assert {(x["model"], x["mode"]) for x in d["mode_ratios"]} == {("mlp-w8-fan", "function")}


def test_markdown_and_plots_written(report):
    rep, out = report
    md = (out / "bench.md").read_text()
    assert "| model |" in md and "latency ratio" in md and "MAC ratio" in md
    table = [line for line in md.splitlines() if line.startswith("| mlp")]
    assert len(table) >= len(rep.rows)
    # every measurement row carries a latency ratio and a MAC ratio next to it
    head = [c.strip() for c in next(li for li in md.splitlines() if li.startswith("| model | neuron")).split("|")]
    i_lat, i_mac = head.index("latency ratio"), head.index("MAC ratio")
    for line in table[:len(rep.rows)]:
        cells = [c.strip() for c in line.split("|")]
        assert float(cells[i_lat]) > 0 and float(cells[i_mac]) > 0
    for name in ("latency_b1.png", "latency_b3.png", "accuracy_vs_latency.png"):
        p = out / name
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "onnx").is_dir() and list((out / "onnx").glob("*.onnx"))
    assert "mlp-w8-fan" in rep.table()


def test_mac_matched_resnet_is_closest_by_macs():
    zoo = [n for n in q.list_models() if n.startswith("resnet")]
    relu_macs = {n: _zoo_macs(n, "relu", SHAPE) for n in zoo}  # count_macs of create_model(n, "relu"), cached
    gen = torch.Generator().manual_seed(0)
    models, pairs, notes = _resolve_models(["resnet8", "resnet20"], "fan", SHAPE, True, gen)
    assert not notes
    quads = {m.name: m for m in models if m.role == "quadratic"}
    for name in ("resnet8", "resnet20"):
        quad = quads[name]
        want = min(zoo, key=lambda n: abs(relu_macs[n] - quad.macs))
        assert want != name
        assert (quad.id, f"{name}-relu", "twin") in pairs
        assert (quad.id, f"{want}-relu", "mac_matched") in pairs
    assert ("resnet20-fan", "resnet56-relu", "mac_matched") in pairs  # QResNet20 ↔ ResNet56 (the example)
    roles = {m.id: m.role for m in models}  # resnet20-relu: twin of resnet20-fan beats MAC-matched of resnet8-fan
    assert roles["resnet20-relu"] == "twin" and roles["resnet56-relu"] == "mac_matched"
    assert all(math.isfinite(m.macs) and m.macs > 0 for m in models)
    # QResNet110: the closest ReLU ResNet by MACs is its own twin → no MAC-matched baseline, with a note
    big = BenchModel(id="resnet110-fan", label="resnet110", name="resnet110", neuron="fan", role="quadratic",
                     module=None, input_shape=SHAPE, macs=_zoo_macs("resnet110", "fan", SHAPE), params=1)
    mm, note = mac_matched_baseline(big, gen)
    assert mm is None and "skipped" in note


def test_mac_matched_mlp_is_widened_to_closest_width():
    gen = torch.Generator().manual_seed(0)
    quad = _resolve_models(["mlp"], "fan", SHAPE, False, gen)[0][0]
    mm, note = mac_matched_baseline(quad, gen)
    w = mm.quadexport_config["width"]
    assert w > 64 and "widened" in note

    def macs(width):
        return q.count_macs(q.create_model("mlp", "relu", input_size=8, width=width), SHAPE)

    assert abs(macs(w) - quad.macs) <= min(abs(macs(w - 1) - quad.macs), abs(macs(w + 1) - quad.macs))


def test_pairing_without_auto_baselines(runs):
    gen = torch.Generator().manual_seed(0)
    models, pairs, _ = _resolve_models([str(runs[0]), str(runs[1]), "resnet8"], "relu", SHAPE, False, gen)
    assert [m.id for m in models] == ["mlp-w8-fan", "mlp-w8-relu", "resnet8-relu"]
    assert ("mlp-w8-fan", "mlp-w8-relu", "twin") in pairs and ("mlp-w8-fan", "resnet8-relu", "mac_matched") in pairs
    assert len(pairs) == 2


@pytest.mark.parametrize("shape, match", [(["1", "28"], "rank 2"), (["1", "28.5", "28"], "not an integer"),
                                          (["1", "0", "28"], ">= 1"), (["1", "x", "28"], "not an integer"),
                                          (["1", "28", "28", "1"], "rank 4")])
def test_cli_bad_input_shape_exits_nonzero(shape, match, capsys):
    assert main(["bench", "mlp", "--input-shape", *shape]) == 2
    err = capsys.readouterr().err
    assert "error" in err and match in err and "C H W" in err


def test_cli_input_shape_mismatch_with_run_dir(runs, capsys):
    assert main(["bench", str(runs[0]), "--input-shape", "3", "8", "8"]) == 2
    assert "input channel" in capsys.readouterr().err
    assert main(["bench", str(runs[0]), "--input-shape", "1", "9", "9"]) == 2  # the MLP's width is fixed
    assert "cannot take input shape" in capsys.readouterr().err


def test_parse_input_shape():
    assert parse_input_shape(None) is None
    assert parse_input_shape([1, 28, 28]) == (1, 28, 28)
    assert parse_input_shape(("3", "32", "32")) == (3, 32, 32)
    for bad in ([1, 28], [1.5, 28, 28], [True, 28, 28], [1, -1, 28]):
        with pytest.raises(BenchError):
            parse_input_shape(bad)


def test_nonfinite_outputs_are_a_clear_error(tmp_path):
    torch.manual_seed(0)
    model = q.create_model("mlp", "fan", in_channels=1, input_size=8, width=8).eval()
    with torch.no_grad():  # finite weights, but the gates overflow float32 on any non-zero input
        model.fc1.g.bias.fill_(1e30)
        model.fc2.g.bias.fill_(1e30)
    save_checkpoint(tmp_path / "bad", model, {"input_shape": list(SHAPE)})
    with pytest.raises(BenchError, match="NaN/Inf"):
        bench([str(tmp_path / "bad")], mode="torch", baselines=False, **FAST)


def test_bad_arguments():
    with pytest.raises(BenchError, match="unknown mode"):
        bench(["mlp"], mode="stacked")
    with pytest.raises(BenchError, match="neither a run dir nor a zoo model"):
        bench(["resnet21"])
    with pytest.raises(BenchError, match="batch"):
        bench(["mlp"], batches=(0,))


# -- issue #16: threads, warnings, table width, plots, progress, CLI -------------------------------------------------

from quadexport.bench import BenchConfig, BenchReport, BenchRow, TimingStats, mac_matched_baseline  # noqa: E402
from quadexport.bench.plots import accuracy_latency_figure  # noqa: E402
from quadexport.bench.rows import compute_ratios  # noqa: E402
from quadexport.bench.timing import SPREAD_WARN, TimingConfig, TimingUnit, time_sessions  # noqa: E402
from quadexport.cli import build_parser  # noqa: E402
from quadexport.zoo import get_model_info, list_models  # noqa: E402


def test_threads_default_to_one_and_progress_is_logged(runs, caplog):
    assert BenchConfig().threads == 1
    assert build_parser().parse_args(["bench", "mlp"]).threads == 1
    before = torch.get_num_threads()
    with caplog.at_level("INFO", logger="quadexport.bench"):
        rep = bench([str(runs[0])], mode="torch", baselines=False, batches=(2,), warmup=1, min_iters=3,
                    min_seconds=0.01)  # no threads given
    assert {r.threads for r in rep.rows} == {1} and rep.config["threads"] == 1 and rep.environment["threads"] == 1
    assert torch.get_num_threads() == before
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("quadexport.bench")]
    timing = [m for m in msgs if m.startswith("batch 2 (1/1): timing")]
    assert timing and "mlp-w8-fan [torch]" in timing[0] and "ETA" in timing[0]


def _row(model_id, mode, stats, macs, role):
    return BenchRow(id=model_id, model=model_id.rsplit("-", 1)[0], neuron=model_id.rsplit("-", 1)[1], mode=mode,
                    provider="cpu", batch=stats.batch, threads=1, p50_ms=stats.p50_ms, p90_ms=stats.p90_ms,
                    p99_ms=stats.p99_ms, mean_ms=stats.mean_ms, stdev_ms=stats.stdev_ms,
                    throughput=stats.throughput, macs=macs, params=1000, file_bytes=None, role=role,
                    min_ms=stats.min_ms, cpu_p50_ms=stats.cpu_p50_ms, cpu_mean_ms=stats.cpu_mean_ms,
                    iters=stats.runs, timed_s=stats.timed_s, rounds=stats.rounds, spread=stats.spread)


def _report(quad_times, quad_chunks, base_times, load):
    quad = TimingStats.from_times(quad_times, batch=1, rounds=2, chunks=quad_chunks)
    base = TimingStats.from_times(base_times, batch=1, rounds=2, chunks=(len(base_times) // 2,) * 2)
    rows = [_row("resnet20-fan", "torch", quad, 123_000_000, "quadratic"),
            _row("resnet20-relu", "torch", base, 41_000_000, "twin")]
    ratios, ovt, modes = compute_ratios(rows, {"resnet20-fan": 123_000_000, "resnet20-relu": 41_000_000},
                                        [("resnet20-fan", "resnet20-relu", "twin")])
    env = {"usable_cores": 2, "load_average": [load, 1.0, 1.0], "load_average_after": [load, 1.0, 1.0]}
    return BenchReport(rows=rows, ratios=ratios, ort_vs_torch=ovt, mode_ratios=modes, config={"threads": 1},
                       environment=env)


def test_warnings_for_busy_machine_and_unsteady_rows():
    # the case from issue #16: torch eager p50 of ~105 ms against 0.39 ms, the quadratic row's chunks far apart
    unsteady = _report([0.0004] * 6 + [0.105] * 8, (6, 8), [0.105] * 8, load=5.0)
    assert unsteady.rows[0].spread > SPREAD_WARN and not unsteady.ratios[0].trusted
    w = unsteady.warnings
    assert any(x.startswith("busy machine") and "5.00" in x for x in w)
    assert any(x.startswith("unsteady timing: resnet20-fan [torch]") for x in w)
    table, md = unsteady.table(), unsteady.to_markdown()
    assert "WARNING: busy machine" in table and "WARNING: unsteady timing" in table and "untrustworthy" in table
    assert "## Warnings" in md and "unsteady timing" in md
    assert unsteady.to_dict()["warnings"] == w
    # a steady pair on a quiet machine: no warning; a tiny ratio keeps its significant digits (never 0.00)
    steady = _report([0.00039] * 8, (4, 4), [0.105] * 8, load=0.2)
    assert steady.warnings == [] and steady.ratios[0].trusted
    assert "0.00371" in steady.table() and "0.00371" in steady.to_markdown() and "0.00 " not in steady.table()


def test_report_json_round_trip(report):
    rep, out = report
    back = BenchReport.load(out / "bench.json")
    assert back.rows == rep.rows and back.ratios == rep.ratios and back.mode_ratios == rep.mode_ratios


def test_table_fits_120_columns(report):
    rep, _ = report
    assert max(len(line) for line in rep.table().splitlines()) <= 120
    long = _report([0.001] * 8, (4, 4), [0.001] * 8, load=9.0)
    long.rows[0].id = "a-very-long-run-directory-name-of-a-compressed-quadratic-resnet110-model-fan"
    long.notes.append("x " * 200)
    assert max(len(line) for line in long.table().splitlines()) <= 120


def test_accuracy_plot_has_log_latency_axis_per_runtime(report):
    rep, _ = report
    fig = accuracy_latency_figure(rep)
    try:
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in axes] == ["onnxruntime decomposed", "onnxruntime function", "torch eager"]
        assert all(ax.get_xscale() == "log" for ax in axes)
        assert all(len(ax.collections) == 2 for ax in axes)  # the two run dirs with accuracies, one point each
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _zoo_bench_model(name):
    return BenchModel(id=f"{name}-fan", label=name, name=name, neuron="fan", role="quadratic", module=None,
                      input_shape=SHAPE, macs=_zoo_macs(name, "fan", SHAPE), params=1)


def test_family_resolution_via_model_info():
    built = []

    def build(name, shape, **kw):  # records the choice instead of building the (untrained) ReLU model
        built.append((name, kw))
        return torch.nn.Identity()

    family = get_model_info("resnet20").family
    _, note = mac_matched_baseline(_zoo_bench_model("resnet20"), build=build)
    assert f"among {', '.join(list_models(family=family))})" in note
    assert built == [("resnet56", {})] and get_model_info("resnet56").family == family
    info = get_model_info("cnn")  # one-member family with a width knob: the twin is widened
    assert list_models(family=info.family) == ["cnn"] and info.width_arg
    _, note = mac_matched_baseline(_zoo_bench_model("cnn"), build=build)
    assert f"widened from {info.width_arg} {info.default_width}" in note
    assert built[1][0] == "cnn" and built[1][1][info.width_arg] > info.default_width


def test_time_sessions_api():
    calls = {"a": 0, "b": 0}

    def unit(key, n):
        def run():
            calls[key] += 1
            return sum(range(n))
        return TimingUnit(key, run, check=lambda out: out >= 0)

    stats = time_sessions([unit("a", 100), unit("b", 20000)], TimingConfig(warmup=1, min_iters=5, min_seconds=0.005,
                                                                          chunk_seconds=0.001, batch=4))
    assert set(stats) == {"a", "b"} and stats["a"].runs >= 5 and stats["b"].runs >= 5
    assert calls["a"] == stats["a"].runs + 1  # one warm-up run
    assert stats["a"].p50_ms < stats["b"].p50_ms  # 200x more work
    assert stats["b"].throughput == pytest.approx(4 / (stats["b"].mean_ms / 1e3))
    with pytest.raises(ValueError, match="distinct keys"):
        time_sessions([unit("a", 1), unit("a", 1)])


def test_cli_help_shows_defaults_and_aliases(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--threads THREADS" in help_text and "(default: 1)" in help_text and "(default: all)" in help_text
    a = build_parser().parse_args(["bench", "mlp", "--batches", "2", "4", "--opt-levels", "basic"])
    assert a.batch == [2, 4] and a.opt_level == "basic"


def test_torchvision_notice_is_filtered(caplog):
    from quadexport.bench.run import _quiet_exporter

    _quiet_exporter()
    lg = logging.getLogger("torch.onnx._internal.exporter._registration")
    with caplog.at_level("WARNING"):
        lg.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        lg.warning("another exporter warning")
    assert "torchvision is not installed" not in caplog.text and "another exporter warning" in caplog.text
