"""Architecture rules (issue #11): dependencies run one way, no cycles between top-level modules, every run kind
the tool writes loads in a fresh interpreter, registries refuse duplicate names."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import quadexport
from quadexport.layers.neurons import get_neuron, register_neuron
from quadexport.zoo.registry import register_model

PKG = Path(quadexport.__file__).resolve().parent
ROOT = PKG.parent

LEVELS = {
    "errors": 0, "_compat": 0, "_version": 0, "_torchutil": 0, "runmeta": 0, "layers": 0, "parity": 0,
    "zoo": 1, "data": 1,
    "transforms": 2,
    "runs": 3,
    "training": 4,
    "exporter": 5,
    "runtimes": 6,  # the runtime registry: imported by check, bench and deploy (same level), importing none of them
    "check": 6, "bench": 6, "compress": 6, "deploy": 6,
    "pipeline": 7, "cli": 7, "experiments": 7,
    "__init__": 7,  # the package facade (``import quadexport``) re-exports the public API of every level
    "__main__": 8,
}
"""Level of each top-level module/subpackage of ``quadexport``: a module may import its own level or lower."""


def _component(parts: list[str]) -> str:
    """Top-level component of a dotted module path inside quadexport (``["zoo", "resnet"]`` → ``"zoo"``)."""
    return parts[0] if parts else "__init__"


def _module_parts(path: Path, pkg: Path) -> tuple[list[str], bool]:
    rel = path.relative_to(pkg).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    return (parts[:-1] if is_pkg else parts), is_pkg


def _imports(path: Path, pkg: Path = PKG) -> list[tuple[int, str]]:
    """``(line, component)`` of every quadexport import in ``path`` (a file of package dir ``pkg``), function-local
    ones included."""
    mod, is_pkg = _module_parts(path, pkg)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "quadexport":
                    out.append((node.lineno, _component(a.name.split(".")[1:])))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = mod if is_pkg else mod[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "quadexport":
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                out.append((node.lineno, _component(target)))
            else:  # ``from quadexport import x``: a submodule, or a name of the facade
                for a in node.names:
                    known = a.name in LEVELS or (pkg / a.name).is_dir() or (pkg / f"{a.name}.py").exists()
                    sub = a.name if known else "__init__"
                    out.append((node.lineno, sub))
    return out


def _graph(pkg: Path = PKG) -> tuple[dict[str, set[str]], list[str]]:
    """``(edges between top-level components, rule violations)`` of the package in directory ``pkg``."""
    edges: dict[str, set[str]] = {}
    problems = []
    for path in sorted(pkg.rglob("*.py")):
        mod, _ = _module_parts(path, pkg)
        src = _component(mod)
        where = path.relative_to(pkg.parent)
        if src not in LEVELS:
            problems.append(f"{where}: top-level module {src!r} has no level: add it to LEVELS in "
                            f"tests/test_architecture.py (house rules: L0 errors/_compat/layers ... L4 pipeline/cli)")
            continue
        for line, dst in _imports(path, pkg):
            if dst not in LEVELS:
                problems.append(f"{where}:{line}: imports quadexport.{dst}, which has no level: add it to LEVELS")
            elif dst != src:
                edges.setdefault(src, set()).add(dst)
                if LEVELS[dst] > LEVELS[src]:
                    problems.append(f"{where}:{line}: {src} (L{LEVELS[src]}) imports {dst} (L{LEVELS[dst]}), "
                                    f"a higher level")
    return edges, problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (one per back edge)."""
    found, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    return found


def test_dependencies_run_one_way():
    edges, problems = _graph()
    assert edges, "no imports found: is the package walk broken?"
    assert not problems, "\n".join(problems)


def test_no_import_cycles_between_top_level_modules():
    edges, _ = _graph()
    cycles = _cycles(edges)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_function_local_and_upward_imports(tmp_path):
    # the walk itself, on a small fake package: a function-local upward import, a relative import, an unknown module
    pkg = tmp_path / "quadexport"
    (pkg / "zoo").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "zoo" / "__init__.py").write_text("from . import probe\n")
    (pkg / "zoo" / "probe.py").write_text("def f():\n    from quadexport.compress.prune import plan\n"
                                          "    from .. import layers\n    import quadexport.newthing\n")
    probe = pkg / "zoo" / "probe.py"
    assert _imports(probe, pkg) == [(2, "compress"), (3, "layers"), (4, "newthing")]
    assert _imports(pkg / "zoo" / "__init__.py", pkg) == [(1, "zoo")]
    edges, problems = _graph(pkg)
    assert edges == {"zoo": {"compress", "layers"}}
    assert any("zoo (L1) imports compress (L6)" in p for p in problems)
    assert any("quadexport.newthing, which has no level: add it to LEVELS" in p for p in problems)
    assert not any("imports layers" in p for p in problems)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _module_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """Imports between the package's modules (dotted names; a package is its ``__init__``), function-local ones
    included."""
    mods: dict[str, tuple[Path, bool]] = {}
    for path in pkg.rglob("*.py"):
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    edges: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                mod = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(name, set()).add(target)
    return edges


def test_no_import_cycles_between_modules():
    # finer than the component check: no two modules anywhere in the package import each other, directly or not
    cycles = _cycles(_module_graph())
    assert not cycles, "module import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_few_loose_modules_and_no_long_files():
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert len(loose) <= 8, f"{len(loose)} loose top-level modules ({', '.join(loose)}): put features in packages"
    long = sorted(f"{p.relative_to(ROOT)} ({n} lines)" for p in PKG.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 450)
    assert not long, "library files over 450 lines: " + ", ".join(long)


# ---------------------------------------------------------------------------------------------------------------
# registries
# ---------------------------------------------------------------------------------------------------------------

def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_neuron(get_neuron("fan_pw"))
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(lambda **kw: None)
    assert quadexport.get_neuron("fan_pw").name == "fan_pw" and "resnet20" in quadexport.list_models()


# ---------------------------------------------------------------------------------------------------------------
# every run kind loads in a fresh interpreter
# ---------------------------------------------------------------------------------------------------------------

_LOAD_ALL = """
import json, sys
import torch
import quadexport
out = {}
for d in sys.argv[1:]:
    m = quadexport.load(d)
    with torch.no_grad():
        y = m(torch.randn(2, *m.quadexport_meta["input_shape"]))
    out[d] = {"shape": list(y.shape), "finite": bool(torch.isfinite(y).all()),
              "layers": sorted({type(x).__name__ for x in m.modules()})}
out["compress_imported"] = "quadexport.compress" in sys.modules
print(json.dumps(out))
"""


@pytest.mark.slow  # ~10 s alone, up to ~30 s on the shared 2-core machine
def test_every_run_kind_loads_in_a_fresh_interpreter(tmp_path):
    import quadexport.compress as qc
    from quadexport.training.loop import TrainConfig, train

    runs = {}
    for model, neuron in (("cnn", "fan"), ("cnn", "relu"), ("mlp", "t2"), ("cnn", "fan_pw")):
        out = tmp_path / f"{model}-{neuron}"
        train(TrainConfig(model=model, neuron=neuron, dataset="digits", out=str(out), epochs=1, width=8,
                          train_subset=100, test_subset=20, batch_size=50), progress=False, plot=False)
        runs[f"{model}-{neuron}"] = out
    comp = tmp_path / "cnn-fan-compressed"
    qc.compress(runs["cnn-fan"], comp, target_ratio=1.6, cost="macs", finetune_epochs=0, max_drop=None, align=4,
                calib_samples=64, bench=False, check=False,
                verbose=False)
    runs["compressed"] = comp
    from quadexport.cli import main as cli_main

    runs["quadratized"] = tmp_path / "cnn-relu-quadratized"
    assert cli_main(["quadratize", str(runs["cnn-relu"]), "--out", str(runs["quadratized"]), "-q"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", _LOAD_ALL, *map(str, runs.values())], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, d in runs.items():
        r = res[str(d)]
        assert r["shape"] == [2, 10] and r["finite"], (name, r)
    assert not res["compress_imported"], "loading a run must not need quadexport.compress"
    assert "QuadConv2d" in res[str(runs["cnn-fan_pw"])]["layers"]
    assert "QuadConv2d" not in res[str(runs["cnn-relu"])]["layers"]
    assert "MixedQuad" in res[str(comp)]["layers"] and "QuadConv2d" not in res[str(comp)]["layers"]
    assert "QuadConv2d" in res[str(runs["quadratized"])]["layers"]
