"""The training app's modules import each other one way, at the top, so a newcomer can follow them.

Only the libraries (``training.lib``, ``rewardmodel.lib``: torch and transformers) are imported
inside functions, by the jobs that run on workers: web processes never import torch.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "training"
# The heavy imports: the libraries (torch), Ray's Jobs client (only a worker with RUN_BACKEND=ray calls it), and
# the Hub's client (only manage.py push_to_hub calls it: training.hub).
LAZY_ALLOWED = ("training.lib", "rewardmodel.lib", "tqdm", "ray.job_submission", "huggingface_hub")


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(APP.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        if relative.parts[1] in ("lib", "migrations"):
            continue
        name = ".".join(relative.parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def _imported(node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    names = {node.module or ""}
    names |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known}
    return names


def test_the_training_app_has_no_import_circle():
    modules = _modules()
    known = set(modules)
    graph = {
        name: {
            target
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for target in _imported(node, known)
            if target in known and target != name
        }
        for name, tree in modules.items()
    }
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target] if target in path else [name, target]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert {"training.starts", "training.jobs", "training.configs", "training.console.views"} <= known


def test_only_the_libraries_are_imported_inside_functions():
    late = []
    for name, tree in _modules().items():
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(LAZY_ALLOWED):
                    if (name, function.name) != ("training.apps", "ready"):  # signals connect once apps are loaded
                        late.append(f"{name}.{function.name}: from {node.module} import ...")
                elif isinstance(node, ast.Import):
                    late += [f"{name}.{function.name}: import {a.name}" for a in node.names
                             if not a.name.startswith(LAZY_ALLOWED)]
    assert late == []
