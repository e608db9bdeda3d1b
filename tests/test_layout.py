"""The package layout follows the data flow: each stage imports only the stages before it."""
import ast
from pathlib import Path

import mood

PACKAGE = Path(mood.__file__).resolve().parent
#: Stages in the order data flows; the top-level entry points (command line, re-exports) may use all.
ORDER = ["config", "volumes", "common", "lsr", "localiser", "detection", "running", "training", "validation"]


def stage(module: str) -> int:
    """``mood.detection.weights`` -> the index of its stage; top-level modules outside ORDER go last."""
    parts = module.split(".")
    return ORDER.index(parts[1]) if len(parts) > 1 and parts[1] in ORDER else len(ORDER)


def imports(path: Path) -> list[str]:
    """Every ``mood`` module that ``path`` imports, at module level or inside functions."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = package[:-1] if package[-1] == "__init__" else package
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            found.append(".".join([*base, *([node.module] if node.module else [])]))
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name == "mood" or name.startswith("mood.")]


def test_stages_import_only_earlier_stages():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for target in imports(path):
            if stage(target) > stage(module):
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_documented_import_paths():
    from mood.detector import Detector
    from mood.detection.detector import Detector as moved
    from mood.training import TrainSettings, train_prior, train_vqvae  # noqa: F401

    assert Detector is moved
