"""The package's layers import only downwards (docs/architecture.md): read every module's imports and check.

core (the math) <- nets, data <- training <- evaluation <- tools. A module may import its own layer and the
layers below it, never one above: the diffusion math stays usable without Lightning, a network without a
trainer, and so on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffusion"

# Each layer and the layers it may import (its own included).
ALLOWED = {
    "core": {"core"},
    "nets": {"core", "nets"},
    "data": {"core", "data"},
    "training": {"core", "nets", "data", "training"},
    "evaluation": {"core", "nets", "data", "training", "evaluation"},
    "tools": {"core", "nets", "data", "training", "evaluation", "tools"},
}
# Third-party packages the math layer must not need.
CORE_FORBIDDEN = ("lightning", "hydra", "omegaconf", "wandb", "torchmetrics", "torch_fidelity")


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "diffusion" else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement names, at any depth (imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "diffusion":  # `from diffusion import data`
                found += [(node.lineno, f"diffusion.{alias.name}") for alias in node.names]
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    wrong = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if len(relative.parts) == 1:
            if path.name != "__init__.py":
                wrong.append(f"{relative}: a module outside every layer; put it in one of {', '.join(ALLOWED)}")
            continue
        layer = relative.parts[0]
        if layer not in ALLOWED:
            wrong.append(f"{relative}: unknown layer {layer!r}")
            continue
        for line, module in imported_modules(path):
            target = layer_of(module)
            if target is not None and target not in ALLOWED[layer]:
                wrong.append(f"{relative}:{line} ({layer}) imports {module} ({target}), a layer above it")
            if layer == "core" and module.split(".")[0] in CORE_FORBIDDEN:
                wrong.append(f"{relative}:{line} (core) imports {module}: the math layer needs torch only")
    return wrong


def test_every_import_points_downwards():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path):
    """The rule itself can fail: a core module importing training, and a stray top-level module."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("import lightning\n\ndef f():\n    from diffusion.training.module import DiffusionModule\n")
    (tmp_path / "stray.py").write_text("x = 1\n")
    found = violations(tmp_path)
    assert any("core/bad.py:4 (core) imports diffusion.training.module (training)" in v for v in found)
    assert any("imports lightning" in v for v in found)
    assert any("stray.py: a module outside every layer" in v for v in found)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_is_a_package_with_a_docstring(layer):
    init = PACKAGE / layer / "__init__.py"
    assert init.exists()
    assert ast.get_docstring(ast.parse(init.read_text())), f"diffusion/{layer}/__init__.py should say what the layer holds"


MAX_LINES = 400
# Modules allowed to be longer, and why (docs/architecture.md).
LONG_MODULES: dict[str, str] = {}


def test_modules_stay_short():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= set(LONG_MODULES), f"modules over {MAX_LINES} lines: {long}"


def shared_file_names(root: Path = PACKAGE) -> dict[str, list[str]]:
    """Module file names used more than once in the package (a package's __init__/__main__ aside): one name, one
    idea, so that a name in a traceback, an import or a search leads to one file."""
    seen: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            seen.setdefault(path.name, []).append(str(path.relative_to(root)))
    return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_no_two_modules_share_a_file_name():
    assert shared_file_names() == {}


def test_the_file_name_check_catches_a_shared_name(tmp_path):
    for folder in ("core", "tools"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "features.py").write_text("")
    assert shared_file_names(tmp_path) == {"features.py": ["core/features.py", "tools/features.py"]}
