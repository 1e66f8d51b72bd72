"""Superfiltering: score instruction data with a small model, keep the best, finetune a strong one."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Before torch loads OpenMP: on a shared CPU host, spinning OpenMP workers wait on descheduled peers and
# elementwise ops slow down 10–300×; sleeping workers made a Gemma-270M training step 2.5–3× faster there
# (experiments/bench_train.md). An explicit OMP_WAIT_POLICY in the environment still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["filter", "score", "select"]

if TYPE_CHECKING:
    from superfilter.api import filter, score, select


def __getattr__(name: str) -> Any:
    if name in __all__:
        # deferred: the API imports torch and transformers; loaded on first use, `import superfilter` stays instant
        from superfilter import api

        return getattr(api, name)
    raise AttributeError(f"module 'superfilter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
