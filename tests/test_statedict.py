"""Checkpoint files as training scripts write them (issue #22 item 2): every layout loads, the harmless extras load
weights-only, anything else is refused naming the type and ``--trust-checkpoint``, and keys that do not fit are
one line naming a few."""

from __future__ import annotations

import argparse
import collections
import fractions

import numpy as np
import pytest
import torch
from torch import nn

from quadexport.transforms.weights import load_weights
from quadexport.transforms.statedict import WeightsError, load_into, read_state_dict, strip_prefixes


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _fresh() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


LAYOUTS = {
    "bare": lambda s: s,
    "state_dict": lambda s: {"epoch": 3, "state_dict": s, "best_prec1": torch.tensor(91.0)},
    "model": lambda s: {"model": s, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}},
    "model_state_dict": lambda s: {"model_state_dict": s, "epoch": 1},
    "net": lambda s: {"net": s, "acc": 90.5},
    "dataparallel": lambda s: {"state_dict": _prefixed(s, "module.")},
    "compiled": lambda s: _prefixed(s, "_orig_mod."),
    "compiled_ddp": lambda s: {"model": _prefixed(s, "_orig_mod.module.")},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_loads_exactly(tmp_path, layout):
    src = _net()
    torch.save(LAYOUTS[layout](src.state_dict()), tmp_path / "ck.pt")
    dst = _fresh()
    assert not _same(src, dst)
    got = load_into(dst, tmp_path / "ck.pt")
    assert _same(src, dst)
    want_prefix = {"dataparallel": ["module."], "compiled": ["_orig_mod."],
                   "compiled_ddp": ["_orig_mod.", "module."]}.get(layout, [])
    assert got.stripped == want_prefix
    # zoo/foreign.load_weights (train --weights, quadratize --weights) reads the same layouts
    dst2 = _fresh()
    load_weights(dst2, tmp_path / "ck.pt")
    assert _same(src, dst2)


def test_prefix_kept_when_the_model_has_it():
    state = {"module.weight": torch.zeros(1)}
    assert strip_prefixes(state, {"module.weight"}) == (state, [])
    assert strip_prefixes(state, {"weight"}) == ({"weight": state["module.weight"]}, ["module."])


def test_namespace_and_numpy_scalars_load_weights_only(tmp_path):
    src = _net()
    args = argparse.Namespace(arch="qresnet20", lr=0.1, epochs=200)
    torch.save({"state_dict": _prefixed(src.state_dict(), "module."), "args": args,
                "best_prec1": np.float64(91.25), "epoch": np.int64(199), "flag": np.bool_(True),
                "dtype": np.dtype("float32")}, tmp_path / "ck.th")
    with pytest.raises(Exception, match="Weights only load failed"):  # what torch alone does with it
        torch.load(tmp_path / "ck.th", weights_only=True)
    before = set(map(repr, torch.serialization.get_safe_globals()))
    dst = _fresh()
    got = load_into(dst, tmp_path / "ck.th")
    assert _same(src, dst)
    assert got.container == "state_dict" and {"args", "best_prec1", "epoch"} <= set(got.others)
    assert set(map(repr, torch.serialization.get_safe_globals())) == before  # allowed for our load only


@pytest.mark.parametrize("extra", [collections.Counter, fractions.Fraction], ids=["counter-ok", "fraction"])
def test_other_types_refused_naming_them_and_the_flag(tmp_path, extra):
    src = _net()
    obj = fractions.Fraction(1, 3) if extra is fractions.Fraction else collections.Counter(a=1)
    torch.save({"state_dict": src.state_dict(), "extra": obj}, tmp_path / "ck.pt")
    if extra is collections.Counter:  # torch allows Counter by default: loads
        load_into(_fresh(), tmp_path / "ck.pt")
        return
    with pytest.raises(WeightsError) as e:
        read_state_dict(tmp_path / "ck.pt")
    msg = str(e.value)
    assert "\n" not in msg and "fractions.Fraction" in msg and "--trust-checkpoint" in msg
    assert "arbitrary code" in msg
    dst = _fresh()
    load_into(dst, tmp_path / "ck.pt", trust=True)  # the user said they trust it
    assert _same(src, dst)
    with pytest.raises(WeightsError, match="re-save its state dict alone"):  # train --weights has no such flag
        load_weights(_fresh(), tmp_path / "ck.pt")


def test_missing_unexpected_and_shape_errors_are_one_line(tmp_path):
    state = _net().state_dict()
    part = {k: v for k, v in state.items() if not k.startswith("3.")}
    part["head.weight"] = torch.zeros(3)
    torch.save({"state_dict": _prefixed(part, "module.")}, tmp_path / "part.pt")
    with pytest.raises(WeightsError) as e:
        load_into(_fresh(), tmp_path / "part.pt")
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing 2: 3.weight, 3.bias" in msg and "unexpected 1: head.weight" in msg
    wrong = dict(state, **{"0.weight": torch.zeros(4, 1, 5, 5)})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match=r"of another shape 1: 0.weight \(4, 1, 5, 5\) vs \(4, 1, 3, 3\)"):
        load_into(_fresh(), tmp_path / "wrong.pt")


def test_no_state_dict_and_corrupt_files(tmp_path):
    torch.save({"epoch": 3, "best": 1.0}, tmp_path / "meta.pt")
    with pytest.raises(WeightsError, match="holds no state dict.*its keys: epoch, best"):
        read_state_dict(tmp_path / "meta.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a loadable checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pt")


def test_numpy1_scalar_name_loads(tmp_path):
    """Checkpoints written under numpy 1 name the scalar constructor ``numpy.core.multiarray.scalar`` (numpy 2:
    ``numpy._core``); both are allowed. The numpy 1 file is this file's pickle with the module name rewritten."""
    import zipfile

    torch.save({"state_dict": {"w": torch.ones(2)}, "best_prec1": np.float64(91.5)}, tmp_path / "np2.pt")
    with zipfile.ZipFile(tmp_path / "np2.pt") as zin, zipfile.ZipFile(tmp_path / "np1.pt", "w") as out:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            out.writestr(info, data)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "np1.pt")
    got = read_state_dict(tmp_path / "np1.pt")
    assert torch.equal(got.state["w"], torch.ones(2)) and got.others == ["best_prec1"]
