"""docs/architecture.md's dependency rules, checked against the code's real import graph.

The rules are read from the table under "## Dependency rules" (the doc is the truth), every
module of pipeline/, engines/ and calibration/ is parsed (imports at any depth count;
``if TYPE_CHECKING:`` blocks do not), and each import of our own code must be allowed by the
first row that matches the module. The checker is shown failing on forbidden imports below.
"""
from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("pipeline", "engines", "calibration")
THREAD_APIS = ("threading.Thread", "concurrent.futures", "multiprocessing", "queue")


def module_files(root: Path = REPO) -> dict[str, Path]:
    mods = {}
    for pkg in OURS:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def imports_of(source: str, known: set[str]) -> set[str]:
    """Modules of ours that ``source`` imports (the deepest known module of each name)."""
    tree = ast.parse(source)
    out: set[str] = set()

    def add(name: str) -> None:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            cand = ".".join(parts[:k])
            if cand in known:
                out.add(cand)
                return
        if parts[0] in OURS:
            out.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for n in node.orelse:
                visit(n)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            add(node.module)
            for a in node.names:
                if f"{node.module}.{a.name}" in known:
                    out.add(f"{node.module}.{a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def thread_uses(source: str) -> set[str]:
    """The thread/queue/process APIs a module uses (imports or attribute uses)."""
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("queue", "multiprocessing")
                      or a.name.startswith("concurrent.futures")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in ("queue", "multiprocessing") or node.module.startswith("concurrent"):
                found.add(node.module)
            if node.module == "threading" and any(a.name == "Thread" for a in node.names):
                found.add("threading.Thread")
        elif isinstance(node, ast.Attribute) and node.attr == "Thread" and isinstance(node.value, ast.Name) \
                and node.value.id == "threading":
            found.add("threading.Thread")
    return found


def _patterns(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def read_rules(doc: str) -> tuple[list[tuple[list[str], list[str], list[str]]], list[str]]:
    """(rows of (modules, may import, except), modules allowed to use threads) from the doc."""
    section = doc.split("## Dependency rules", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        cells += [""] * (3 - len(cells))
        allowed = [] if cells[1] == "nothing" else _patterns(cells[1])
        rows.append((_patterns(cells[0]), allowed, _patterns(cells[2])))
    threads = section.split("**Threads.**", 1)[1]
    thread_ok = [p.replace("/", ".").removesuffix(".py") for p in re.findall(r"`([a-z_/]+\.py)`", threads)]
    return rows, thread_ok


def _match(name: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return name == pattern[:-2] or name.startswith(pattern[:-1])
    return fnmatch.fnmatchcase(name, pattern)


def violations(mods: dict[str, str], rules) -> list[str]:
    """``mods``: module name -> source. Each forbidden import as 'module imports target'."""
    known = set(mods)
    bad = []
    for name, source in sorted(mods.items()):
        row = next(((m, a) for m, a, exc in rules
                    if any(_match(name, p) for p in m) and not any(_match(name, p) for p in exc)), None)
        if row is None:
            continue
        for target in sorted(imports_of(source, known)):
            if target == name or target.split(".")[0] not in OURS:
                continue
            if not any(_match(target, p) for p in row[1]):
                bad.append(f"{name} imports {target}")
    return bad


@pytest.fixture(scope="module")
def rules():
    return read_rules((REPO / "docs" / "architecture.md").read_text())


@pytest.fixture(scope="module")
def sources():
    return {name: p.read_text() for name, p in module_files().items()}


def test_the_code_keeps_the_documented_dependency_rules(rules, sources):
    rows, _ = rules
    assert len(rows) >= 10, "the rules table in docs/architecture.md was not found"
    assert violations(sources, rows) == []


def test_the_checker_fails_on_forbidden_imports(rules, sources):
    """The failing case: each of these added to the real code base breaks a documented rule."""
    rows, _ = rules
    cases = {
        "calibration.bad_math": "from pipeline.runner import run_pipeline\n",
        "engines.bad_backend_helper": "def f():\n    from pipeline.sinks.recorder import Recorder\n",
        "engines.onnxruntime_backend": sources["engines.onnxruntime_backend"] + "\nimport pipeline.stages\n",
        "pipeline.graph": sources["pipeline.graph"] + "\nfrom pipeline.sources.base import CameraInput\n",
        "pipeline.sync": sources["pipeline.sync"] + "\nfrom pipeline.run_config import RunConfig\n",
        "pipeline.sources.zenoh_lidar": sources["pipeline.sources.zenoh_lidar"]
        + "\nfrom pipeline.sinks.publisher import PublisherConfig\n",
        "pipeline.types": sources["pipeline.types"] + "\nfrom pipeline.fusion.label import InstanceMap\n",
    }
    for name, src in cases.items():
        got = violations({**sources, name: src}, rows)
        assert got, f"{name}: a forbidden import was not caught"
        assert all(v.startswith(name + " imports ") for v in got), got
    # TYPE_CHECKING imports are annotations, not dependencies
    ok = sources["pipeline.types"] + "\nif TYPE_CHECKING:\n    from pipeline.runner import Run\n"
    assert violations({**sources, "pipeline.types": ok}, rows) == []


def test_only_the_graph_and_the_documented_tools_use_threads_or_queues(rules, sources):
    _, allowed = rules
    assert "pipeline.graph" in allowed
    users = {name for name, src in sources.items() if thread_uses(src)}
    assert users - set(allowed) == set(), f"threads or queues outside pipeline/graph.py: {sorted(users - set(allowed))}"
    assert "pipeline.graph" in users
    # and the check can fail
    assert thread_uses("import threading\nthreading.Thread(target=print).start()\n") == {"threading.Thread"}
    assert thread_uses("from concurrent.futures import ThreadPoolExecutor\n")


def test_no_payload_is_tagged_by_the_graph_and_no_slot_is_any(sources):
    """The envelope is the graph's: no setattr on what stages pass, no Any-typed payload slots."""
    tree = ast.parse(sources["pipeline.graph"])
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in ("setattr", "getattr")]
    assert calls == [], "the graph tags payloads with setattr/getattr"
    types_tree = ast.parse(sources["pipeline.types"])
    any_fields = [n.target.id for n in ast.walk(types_tree) if isinstance(n, ast.AnnAssign)
                  and isinstance(n.target, ast.Name) and "Any" in ast.unparse(n.annotation)]
    assert any_fields == [], f"payload fields typed Any: {any_fields}"


def test_stage_signatures_match_the_diagram():
    """The stages' call signatures are the arrows of docs/architecture.md's table."""
    import inspect
    import typing

    import pipeline.stages as st
    from pipeline.preprocess import Batches
    from pipeline.types import FusionResult, Masks, ModelOutput, ModelOutputs, SyncedFrame

    expect = {st.Preprocess: ((SyncedFrame,), Batches), st.Infer: ((Batches,), ModelOutput),
              st.Postprocess: ((Batches, ModelOutputs), Masks), st.GroundTruthMasks: ((SyncedFrame,), Masks),
              st.Fuse: ((SyncedFrame, Masks), FusionResult)}
    doc = (REPO / "docs" / "architecture.md").read_text()
    for cls, (takes, gives) in expect.items():
        hints = typing.get_type_hints(cls.__call__)
        params = [p for p in inspect.signature(cls.__call__).parameters if p != "self"]
        assert tuple(hints[p] for p in params) == takes, cls.__name__
        ret = hints["return"]
        assert ret is gives or gives in typing.get_args(ret), cls.__name__
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{cls.__name__}`"))
        for t in (*takes, gives):
            assert f"`{t.__name__}`" in row, f"docs/architecture.md's row for {cls.__name__} lacks {t.__name__}"
