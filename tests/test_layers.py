"""The library's layering (``zerank.LAYERS``): a subpackage imports only from its own layer or below, subpackages
never import each other in a cycle, and the remote code imports nothing of the library."""

import ast
import graphlib
from pathlib import Path

import pytest

import zerank

PACKAGE = Path(zerank.__file__).parent
ROOT = PACKAGE.parent
LEVEL = {name: level for level, layer in enumerate(zerank.LAYERS) for name in layer}


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


def feature(path: Path) -> str:
    """The subpackage (or top-level module) of ``zerank`` that a file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def feature_imports(path: Path) -> set[str]:
    return {name.split(".")[1] for name in imported_modules(path) if name.startswith("zerank.")} & set(LEVEL)


FILES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_subpackage_has_a_layer():
    assert {feature(p) for p in FILES} == set(LEVEL)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_points_up(path):
    upward = {name for name in feature_imports(path) if LEVEL[name] > LEVEL[feature(path)]}
    assert not upward, f"{path.relative_to(ROOT)} imports from a higher layer: {sorted(upward)}"


def test_subpackages_import_each_other_without_cycles():
    graph: dict[str, set[str]] = {name: set() for name in LEVEL}
    for path in FILES:
        graph[feature(path)] |= feature_imports(path) - {feature(path)}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from zerank.serving import server\n")
    assert feature_imports(bad) == {"serving"} and LEVEL["serving"] > LEVEL["model"]


@pytest.mark.parametrize("remote", ["modeling_zerank.py", "zerank_fast_path.py", "zerank_st.py"])
def test_remote_code_imports_only_its_runtime(remote):
    roots = {name.split(".")[0] for name in imported_modules(ROOT / remote)}
    allowed = {"__future__", "copy", "dataclasses", "inspect", "logging", "re", "collections", "typing", "torch",
               "transformers", "huggingface_hub", "sentence_transformers"}
    if remote == "modeling_zerank.py":  # its sibling, imported relatively so that transformers copies it
        allowed = (allowed - {"sentence_transformers"}) | {"zerank_fast_path"}
    if remote == "zerank_fast_path.py":  # the fast path needs the backbone only
        allowed -= {"sentence_transformers", "huggingface_hub"}
    assert roots <= allowed, sorted(roots - allowed)
