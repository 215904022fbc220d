"""The floors of the house (docs/architecture.md): no module imports a floor above its own, and no
two modules import each other, directly or around a loop.

Imports are read with ``ast`` (module level and inside functions alike: a function-level import is
still a dependency), so the check needs no tool and imports nothing it checks. An import of a
module's own package (``alignment.tasks.problems.gsm`` -> ``alignment.tasks.problems``) is not an
edge: Python runs a package's ``__init__`` before any of its modules anyway.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("alignment", "synth", "reward")

# Floor of each module, by longest matching name prefix (docs/architecture.md, "The floors").
FLOORS: dict[str, int] = {
    # 0 core: errors, paths, files and the manifest, checkpoint checks, the stage contract, ranges
    "alignment.errors": 0, "alignment.paths": 0, "alignment.stats": 0, "alignment.artifacts": 0,
    "alignment.checkpoints": 0, "alignment.stage_contract": 0, "alignment.validate": 0,
    # 1 kernels
    "alignment.kernels": 1,
    # 2 model (importing `alignment` registers the model with the Auto classes)
    "alignment.model": 2, "alignment": 2,
    # 3 sampling, data, tasks, safety
    "alignment.sampling": 3, "alignment.data": 3, "alignment.tasks": 3, "alignment.safety": 3,
    # 4 train: the training stages and what they share
    "alignment.train": 4,
    # 5 the other stages: synth, reward, eval
    "synth": 5, "reward": 5, "alignment.tasks.evaluate": 5,
    # 6 the pipeline, its launcher, its report, and the command lines
    "alignment.pipeline": 6, "alignment.launch": 6, "alignment.report": 6, "alignment.__main__": 6,
    "synth.cli": 6, "synth.__main__": 6, "reward.cli": 6, "reward.__main__": 6,
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def floor(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOORS:
            return FLOORS[".".join(parts[:n])]
    raise AssertionError(f"{module}: no floor in tests/test_layers.py FLOORS (add it, and to docs/architecture.md)")


def imports(module: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """Project modules ``module`` imports -> line of the first import (module or function level)."""

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    is_pkg = path.name == "__init__.py"
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            # `from a.b import c`: the module a.b.c when c is one, else a.b
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            target = resolve(name)
            own_package = module == target or module.startswith(f"{target}.")
            if target and not own_package:
                found.setdefault(target, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_no_module_imports_a_floor_above_its_own():
    bad = [f"{known_path(m)}:{line}: {m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
           for m, deps in graph().items() for t, line in deps.items() if floor(t) > floor(m)]
    assert not bad, "imports from a higher floor:\n" + "\n".join(bad)


def test_no_import_cycles():
    edges = graph()
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:  # depth-first search; a grey node met again closes a loop
        state[m] = "grey"
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == "grey":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "black"

    for m in edges:
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def known_path(module: str) -> str:
    return str(modules()[module].relative_to(ROOT))
