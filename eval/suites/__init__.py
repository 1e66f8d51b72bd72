"""The evaluation suites, one module each; `discover()` imports them all, and each registers itself (eval.registry)."""

from __future__ import annotations

import importlib
import pkgutil


def discover() -> None:
    """Import every module of this package; each registers its suites."""
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
