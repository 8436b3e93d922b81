"""The library's layering: a module imports only from its own layer or below, and the remote code imports nothing
of the library."""

import ast
from pathlib import Path

import pytest

import zerank

PACKAGE = Path(zerank.__file__).parent
ROOT = PACKAGE.parent
LAYERS = [
    {"arguments", "resources", "system"},
    {"data", "metrics", "zelo", "store"},
    {"loading", "scoring", "retrieval", "package", "runtimes"},
    {"convert", "export", "evaluation", "calibration", "training", "publish", "server", "benchmark", "bench_serve",
     "demo", "zelo_tasks", "rerank", "search_api"},
    {"cli"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "zerank":
                names.update(f"zerank.{alias.name}" for alias in node.names)
    return names


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LEVEL)


@pytest.mark.parametrize("module", sorted(LEVEL))
def test_no_import_points_up(module):
    imports = imported_modules(PACKAGE / f"{module}.py")
    used = {name.split(".")[1] for name in imports if name.startswith("zerank.") and name.count(".") == 1} & set(LEVEL)
    upward = {name for name in used if LEVEL[name] > LEVEL[module]}
    assert not upward, f"zerank.{module} imports from a higher layer: {sorted(upward)}"


@pytest.mark.parametrize("remote", ["modeling_zerank.py", "zerank_st.py"])
def test_remote_code_imports_only_its_runtime(remote):
    roots = {name.split(".")[0] for name in imported_modules(ROOT / remote)}
    allowed = {"__future__", "copy", "inspect", "logging", "re", "collections", "typing", "torch", "transformers",
               "huggingface_hub", "sentence_transformers"}
    assert roots <= allowed, sorted(roots - allowed)
    if remote == "modeling_zerank.py":
        assert "sentence_transformers" not in roots
