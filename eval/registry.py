"""The registry of evaluation suites: name → config schema + run function; the eval stage loops over it.

A suite is one module in `eval/suites/` (found automatically) or anywhere else that calls `register(Suite(...))`:

    @dataclass
    class MyConfig:                       # the suite's section: eval.<name>.* (unknown keys fail, as everywhere)
        limit: int = 0

    def prompts(ctx: Context, cfg: MyConfig) -> Prompts:   # optional: answers the stage generates first
        return Prompts(model={"set": [Prompt("1", "Say hi")]})

    def run(ctx: Context, cfg: MyConfig) -> Result:
        answers = ctx.outputs["my_suite"]["set"]             # generated in the model's training template
        score = ...                                          # ctx.judge_all(...), ctx.load_model(), ...
        return Result(result={"score": score},              # → eval/my_suite.json
                      metrics={"score": score},              # → the stage's metrics.json under "my_suite"
                      headline={"my_suite_score": score},    # → the tracker
                      summary=["### My suite", "", f"score {score:.3f}"])  # → eval/summary.md

    register(Suite("my_suite", MyConfig, run, prompts=prompts,
                   report=lambda metrics: {"my score": metrics.get("score")}))   # → the report

plus `conf/eval/my_suite.yaml` (`suites: [my_suite]`). Nothing else is edited: `eval.config.EvalConfig` gets one
field per suite registered in this package (its schema, defaults from the dataclass), `eval.suites=[...]` is
checked against the registry before any model loads, and the summary, the tracker mirror and the report iterate
over what each suite returns.

Optional hooks: `validate(cfg, eval_cfg)` — cheap checks at config time (raise ConfigError naming the key);
`preflight(cfg, eval_cfg)` — checks that read files or indexes (task names, the Hub) at the start of the stage,
before any model loads; `needs_reference` — the suite compares with the partner model (eval.reference); the
pipeline trains the partner only when a selected suite sets it.
A suite module imports this module, `eval.settings` and whatever it runs, at its top; it never imports
`eval.config` (the schema built from this registry) or `eval.stage`.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.generation import Prompt, load_trained
from eval.judge import Annotation, AnnotationCache, Judge, JudgeRequest, describe, judge_all, make_judge
from eval.settings import EvalSettings
from superfilter.contracts import EVAL_DIR, JUDGE_ANNOTATIONS_FILE, JUDGE_DIR
from superfilter.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Prompts:
    """Prompts a suite needs answered, by group: by the evaluated model, and by the partner (reference) model."""

    model: dict[str, list[Prompt]] = field(default_factory=dict)
    reference: dict[str, list[Prompt]] = field(default_factory=dict)


@dataclass
class Table:
    name: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Result:
    """What one suite produced; the stage writes and mirrors it, the suite never touches the summary itself."""

    result: dict[str, Any]  # written to eval/<name>.json
    metrics: dict[str, Any]  # the headline numbers in the stage's metrics.json, under the suite's name
    headline: dict[str, float] = field(default_factory=dict)  # tracker scalars, named <suite>_<metric>
    summary: list[str] = field(default_factory=list)  # markdown lines for eval/summary.md
    tables: list[Table] = field(default_factory=list)  # tracker tables
    images: dict[str, Path] = field(default_factory=dict)  # tracker images
    notes: list[str] = field(default_factory=list)  # caveats, listed at the end of eval/summary.md


@dataclass(frozen=True)
class Suite:
    name: str
    schema: type  # a dataclass: the suite's config section eval.<name>
    run: Callable[[Context, Any], Result]
    prompts: Callable[[Context, Any], Prompts] | None = None
    validate: Callable[[Any, EvalSettings], None] | None = None
    preflight: Callable[[Any, EvalSettings], None] | None = None
    report: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # report columns (saved in metrics.json)
    needs_reference: bool = False
    description: str = ""


REGISTRY: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    if suite.name in REGISTRY and REGISTRY[suite.name].run is not suite.run:
        raise ValueError(f"eval suite {suite.name!r} is registered twice "
                         f"({REGISTRY[suite.name].run.__module__} and {suite.run.__module__})")
    REGISTRY[suite.name] = suite
    return suite


def get(name: str) -> Suite:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"eval.suites: unknown suite {name!r}{hint}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def section(cfg: EvalSettings, name: str) -> Any:
    """The suite's config section; a suite registered after EvalSettings was built runs with its schema's defaults."""
    value = getattr(cfg, name, None)
    return value if value is not None else get(name).schema()


class Context:
    """What every suite of one evaluation shares: the models, the device, the folders, the answers and the judge."""

    def __init__(self, model_dir: Path, reference_dir: Path | None, cfg: EvalSettings, device: str, out_dir: Path,
                 cache_root: Path, model_name: str, reference_name: str = "none") -> None:
        self.model_dir, self.reference_dir, self.cfg, self.device = model_dir, reference_dir, cfg, device
        self.out_dir, self.cache_root = out_dir, cache_root
        self.model_name, self.reference_name = model_name, reference_name
        self.outputs: dict[str, dict[str, list[str]]] = {}  # suite → group → answers in prompt order
        self.reference_outputs: dict[str, dict[str, list[str]]] = {}
        self.generation_stats: dict[str, Any] = {}
        self.judge_summaries: dict[str, Any] = {}
        self._judge: Judge | None = None

    @property
    def eval_dir(self) -> Path:
        return self.out_dir / EVAL_DIR

    def limit(self, own: int) -> int:
        """A suite's own limit, else eval.limit (0 = everything)."""
        return self.cfg.suite_limit(own)

    def load_model(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the evaluated model on the stage's device; free it when done (gc.collect())."""
        return load_trained(self.model_dir, self.device)

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = make_judge(self.cfg.judge, self.device)
        return self._judge

    def judge_all(self, label: str, requests: list[JudgeRequest]) -> list[Annotation]:
        """Annotations in request order, from the stage's and the shared cache where present; summary under label."""
        caches = [AnnotationCache(self.out_dir / JUDGE_DIR / JUDGE_ANNOTATIONS_FILE),
                  AnnotationCache(self.cache_root / JUDGE_DIR / JUDGE_ANNOTATIONS_FILE)]
        annotations, summary = judge_all(self.judge, requests, caches)
        self.judge_summaries[label] = summary
        return annotations

    def judge_note(self) -> str:
        return describe(self.cfg.judge)
