"""Each contract has one definition (superfilter/contracts.py) and no private name crosses a package boundary."""

import ast
from pathlib import Path

from superfilter import contracts

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("superfilter", "train", "eval")
SOURCES = sorted(p for folder in (*PACKAGES, "experiments") for p in (ROOT / folder).rglob("*.py")
                 if "__pycache__" not in p.parts) + [ROOT / "run.py"]
# Names specific enough to find by text; "model", "eval" or "config.json" would also match unrelated strings.
SPELLED_ONCE = (contracts.DEFAULT_MODEL, contracts.EXAMPLES_FILE, contracts.SCORES_FILE, contracts.SUBSET_FILE,
                contracts.MODEL_INFO_FILE, contracts.TRAIN_RESULT_FILE, contracts.TRAIN_METRICS_FILE,
                contracts.LOSS_CURVE_FILE, contracts.RUN_SUMMARY_FILE, contracts.STAGE_METRICS_FILE,
                contracts.SUCCESS_MARKER, contracts.JUDGE_ANNOTATIONS_FILE, contracts.REPORT_COLUMNS)


def test_contract_names_are_spelled_only_in_contracts():
    offenders = []
    for path in SOURCES:
        if path == ROOT / "superfilter" / "contracts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and node.value in SPELLED_ONCE:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert offenders == []


def _package(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def test_no_private_name_is_imported_across_packages():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        modules = {}  # local alias → our module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    if alias.name.startswith("_") and node.module.split(".")[0] != _package(path):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}")
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in PACKAGES:
                        modules[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in modules
                    and modules[node.value.id].split(".")[0] != _package(path)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert offenders == []
