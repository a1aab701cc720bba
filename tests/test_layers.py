"""The package's import graph runs down the layers stated in docs/contracts.md ("Layers"): every
module (function-level imports included) imports only its own package or lower layers, and every
module belongs to a layer."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "smf_sweep"


def layers() -> list[set[str]]:
    """The numbered lines of the Layers section: the backticked names before the dash."""
    text = (ROOT / "docs" / "contracts.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    out = []
    for line in section.splitlines():
        m = re.match(r"\d+\. (.*?) — ", line)
        if m:
            out.append(set(re.findall(r"`([\w.]+)`", m.group(1))))
    return out


def unit(module: str) -> str:
    """smf_sweep.memory.layer -> memory; smf_sweep.train_loop -> train_loop."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every smf_sweep import in the file, at any depth."""
    package = list(path.relative_to(ROOT).parts[:-1])        # a module's package; an __init__'s own
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            out += [(node.lineno, n) for n in names if n.startswith("smf_sweep")]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("smf_sweep")]
    return out


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_layer_list_is_well_formed():
    ls = layers()
    assert len(ls) >= 10, ls
    names = [n for layer in ls for n in layer]
    assert len(names) == len(set(names)), "a name in two layers"


def test_every_module_belongs_to_a_layer():
    known = set().union(*layers())
    units = {unit(".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in modules()} - {"", "__init__"}
    assert not units - known, (f"modules in no layer: {sorted(units - known)}; put each on the line of "
                               f"docs/contracts.md's Layers section that its imports allow")


def test_imports_run_down_the_layers():
    rank = {n: i for i, layer in enumerate(layers()) for n in layer}
    upward = []
    for path in modules():
        me = unit(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if me in ("", "__init__"):
            continue
        for line, target in imports(path):
            them = unit(target)
            if them and them != me and not rank[them] < rank[me]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({me}, layer {rank[me] + 1}) imports "
                              f"{target} ({them}, layer {rank[them] + 1})")
    assert not upward, "imports up or across the layers:\n" + "\n".join(upward)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path):
    """The graph itself: a relative import inside a function of a subpackage resolves."""
    probe = PKG / "memory" / "insert.py"
    found = {t for _, t in imports(probe)}
    assert "smf_sweep.memory.layer" in found
    smf = {t for _, t in imports(PKG / "methods" / "smf.py")}
    assert {"smf_sweep.stage", "smf_sweep.batching", "smf_sweep.data"} <= smf   # the last two inside functions
