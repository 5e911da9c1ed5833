"""Only safe formats: safetensors, JSON and YAML via safe_load. Nothing in the package unpickles
(torch.load without weights_only=True, pickle, numpy with allow_pickle) or runs file content
(eval, exec, yaml.load with another loader)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "selmem"


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str) -> list[str]:
    """Lines of ``source`` that load or run untrusted content unsafely."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}
                   for n in names):
                found.append(f"line {node.lineno}: imports {names}")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        if isinstance(f, ast.Name) and name in {"eval", "exec", "compile", "__import__"}:
            found.append(f"line {node.lineno}: {name}()")
        elif name == "load" and owner == "torch" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif owner == "yaml" and name in {"load", "load_all", "unsafe_load", "full_load", "unsafe_load_all"}:
            found.append(f"line {node.lineno}: yaml.{name} (use yaml.safe_load)")
        elif owner in {"np", "numpy"} and name == "load" and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"line {node.lineno}: numpy load with allow_pickle=True")
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PACKAGE)) for p in FILES])
def test_no_unsafe_loading_or_execution(path):
    assert unsafe_calls(path.read_text()) == [], f"{path}: unsafe"


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(f)",
    "import torch\ntorch.load(f, weights_only=False)",
    "import pickle",
    "from pickle import loads",
    "eval(text)",
    "exec(open(p).read())",
    "import yaml\nyaml.load(s, Loader=yaml.Loader)",
    "import numpy as np\nnp.load(p, allow_pickle=True)",
])
def test_the_scanner_catches_each_unsafe_pattern(snippet):
    assert unsafe_calls(snippet), snippet


def test_the_scanner_accepts_the_safe_forms():
    assert unsafe_calls("import torch, yaml\ntorch.load(f, weights_only=True)\nyaml.safe_load(s)\n"
                        "model.eval()\n") == []
