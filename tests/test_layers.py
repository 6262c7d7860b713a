"""Imports point down the layers and never go round in a circle (docs/architecture.md).

Every module under ``z4j_bare/`` is parsed (``ast``, nothing is imported) and placed in a layer
by its name. A module may import its own layer and the layers below it; ``testing/`` (the local
brain) imports only ``protocol/``, ``logs`` and itself, and only the face imports it. All
imports count: module level, inside functions, and under ``TYPE_CHECKING`` (a type reference
is a dependency too).

A new module must match a pattern below: add it to its layer (and to docs/architecture.md).
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

import z4j_bare

PACKAGE_DIR = Path(z4j_bare.__file__).resolve().parent
ROOT = "z4j_bare"
FACADE = "__init__"  # the package's own __init__: the public facade

# Bottom up. Patterns are module names relative to the package (fnmatch: "engines.*"); a module
# takes the first layer that matches, so a narrow pattern in a lower layer wins over a wide one
# above it ("schedules.model" is the scheduler adapters' contract, the rest of "schedules.*" runs
# in the agent).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("protocol", ("protocol", "protocol.*")),
    ("logs", ("logs",)),
    ("storage", ("buffer", "buffer_*", "spool", "spool_*", "storage", "storage.*", "storage_*")),
    # config resolves settings from keywords and the environment and imports only protocol/ and
    # logs: it sits with the support modules so engines that start in their own processes
    # (Dramatiq workers) can read it.
    ("capture support", ("redaction", "redaction_*", "events", "flatdata", "safety", "forkguard", "config")),
    ("engines", ("engines", "engines.*", "schedulers", "schedulers.*", "schedules.model")),
    ("runtime", ("statechart", "backoff", "transport", "transport.*", "transport_*", "session", "lifecycle",
                 "channels", "controls", "outbox", "outbox_*", "commands", "commands_*", "health", "runtime",
                 "runtime_*", "agent", "agent_*", "framework", "orchestrator", "schedules",
                 "schedules.*")),
    ("testing", ("testing", "testing.*")),
    ("face", (FACADE, "__main__", "cli", "cli_*", "diagnostics", "diagnostics_*", "demo", "demo_*")),
)
# The local brain is a separate program that happens to ship in the package: it stands on the
# wire codec alone, and only the face (the demo) uses it.
TESTING_MAY_IMPORT = ("protocol", "logs", "testing")

# What breaks the rules today, each with who removes it. The tests fail when one is gone, so
# these lists only shrink.
KNOWN_UP_ARROWS: Mapping[tuple[str, str], str] = {}
KNOWN_CYCLES: Mapping[frozenset[str], str] = {}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or FACADE


def _is_package(name: str, package_dir: Path) -> bool:
    return name == FACADE or (package_dir / name.replace(".", "/") / "__init__.py").exists()


def _exists(name: str, package_dir: Path) -> bool:
    return _is_package(name, package_dir) or (package_dir / (name.replace(".", "/") + ".py")).exists()


def _join(base: str, tail: str) -> str:
    if base == FACADE:
        return tail or FACADE
    return f"{base}.{tail}" if tail else base


def _resolve(source: str, node: ast.ImportFrom | ast.Import, package_dir: Path) -> Iterable[str]:
    """The project modules an import statement names (relative to the package)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                yield alias.name[len(ROOT) + 1:] or FACADE
        return
    if node.level:
        package = source if _is_package(source, package_dir) else source.rpartition(".")[0] or FACADE
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0] or FACADE
        base = _join(package, node.module or "")
    elif node.module == ROOT or (node.module or "").startswith(ROOT + "."):
        base = node.module[len(ROOT) + 1:] or FACADE  # type: ignore[index]
    else:
        return
    for alias in node.names:
        sub = _join(base, alias.name)
        yield sub if _exists(sub, package_dir) else base  # "from . import x" names a submodule


def project_imports(package_dir: Path = PACKAGE_DIR) -> tuple[list[str], list[Import]]:
    modules, imports = [], []
    for path in sorted(package_dir.rglob("*.py")):
        source = module_name(path, package_dir)
        modules.append(source)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.extend(Import(source, target, node.lineno)
                               for target in set(_resolve(source, node, package_dir)) if target != source)
    return modules, imports


def layer_of(module: str) -> int | None:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return rank
    return None


def _rank(name: str) -> int:
    return [n for n, _ in LAYERS].index(name)


def layer_violations(imports: Iterable[Import]) -> list[str]:
    out = []
    testing, face = _rank("testing"), _rank("face")
    allowed_for_testing = {_rank(n) for n in TESTING_MAY_IMPORT}
    for imp in imports:
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is None or dst is None:
            continue  # reported by test_every_module_has_a_layer
        if src == testing:
            bad = dst not in allowed_for_testing
        elif dst == testing:
            bad = src != face
        else:
            bad = dst > src
        if bad:
            out.append(f"{imp.source} ({LAYERS[src][0]}) imports {imp.target} ({LAYERS[dst][0]}) "
                       f"at line {imp.line}")
    return out


def import_cycles(modules: Iterable[str], imports: Iterable[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def _unexcused_cycles(cycles: list[list[str]]) -> list[list[str]]:
    return [c for c in cycles if not any(set(c) <= known for known in KNOWN_CYCLES)]


# ---------------------------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    modules, _ = project_imports()
    unplaced = [m for m in modules if layer_of(m) is None]
    assert not unplaced, (f"modules in no layer: {unplaced}; add each to LAYERS in {Path(__file__).name} "
                          "(and to docs/architecture.md)")


def test_imports_point_down_the_layers() -> None:
    _, imports = project_imports()
    bad = layer_violations(i for i in imports if (i.source, i.target) not in KNOWN_UP_ARROWS)
    assert not bad, "imports that point up a layer:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    modules, imports = project_imports()
    cycles = _unexcused_cycles(import_cycles(modules, imports))
    assert not cycles, f"import cycles: {cycles}"


def test_known_exceptions_still_exist() -> None:
    modules, imports = project_imports()
    present = {(i.source, i.target) for i in imports}
    gone = [edge for edge in KNOWN_UP_ARROWS if edge not in present]
    cycles = import_cycles(modules, imports)
    gone += [sorted(known) for known in KNOWN_CYCLES if not any(len(known & set(c)) > 1 for c in cycles)]
    assert not gone, f"fixed, remove from KNOWN_UP_ARROWS / KNOWN_CYCLES: {gone}"


def test_engines_never_import_the_runtime_agent_or_face() -> None:
    # The one rule issue 17 names explicitly, spelled out so its failure reads plainly.
    _, imports = project_imports()
    engines, runtime = _rank("engines"), _rank("runtime")
    bad = [i for i in imports if layer_of(i.source) == engines and (layer_of(i.target) or 0) >= runtime]
    assert not bad, bad


# -- the checker itself can fail -----------------------------------------------------------------


def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / ROOT
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_sees_cycles_up_arrows_and_every_import_form(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "engines/__init__.py": "",
        "engines/rq.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..agent import x\n",
        "agent.py": "def f():\n    from .engines import rq\n",
        "logs.py": "import z4j_bare.redaction\n",
        "redaction.py": "from z4j_bare import logs\nfrom .protocol.frames import Frame\n",
        "protocol/__init__.py": "from . import frames\n",
        "protocol/frames.py": "import json\n",
        "testing/__init__.py": "from ..buffer import BufferStore\n",
        "buffer.py": "",
    })
    modules, imports = project_imports(root)
    edges = {(i.source, i.target) for i in imports}
    assert {("engines.rq", "agent"), ("agent", "engines.rq"), ("logs", "redaction"), ("redaction", "logs"),
            ("redaction", "protocol.frames"), ("protocol", "protocol.frames"), ("testing", "buffer")} <= edges
    assert sorted(map(tuple, import_cycles(modules, imports))) == [("agent", "engines.rq"), ("logs", "redaction")]
    bad = layer_violations(imports)
    assert any(v.startswith("engines.rq (engines) imports agent (runtime)") for v in bad)
    assert any(v.startswith("logs (logs) imports redaction (capture support)") for v in bad)
    assert any(v.startswith("testing (testing) imports buffer (storage)") for v in bad)
    assert not any(v.startswith(("agent ", "redaction ", "protocol ")) for v in bad)


@pytest.mark.parametrize(("module", "layer"), [
    ("protocol.timestamps", "protocol"), ("buffer_files", "storage"), ("redaction_patterns", "capture support"),
    ("engines.dramatiq", "engines"), ("schedulers.celerybeat", "engines"), ("schedules.model", "engines"),
    ("schedules.channel", "runtime"), ("storage.spool", "storage"), ("transport.websocket", "runtime"),
    ("agent_rq", "runtime"), ("testing.brain", "testing"), (FACADE, "face"),
    ("demo_tasks", "face"),
])
def test_layer_patterns(module: str, layer: str) -> None:
    rank = layer_of(module)
    assert rank is not None and LAYERS[rank][0] == layer
