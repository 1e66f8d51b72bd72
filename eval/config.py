"""Schema of the eval stage: the shared settings plus one section per registered suite, and its config-time checks."""

from __future__ import annotations

from dataclasses import field, make_dataclass

from eval import suites
from eval.judge import JUDGES
from eval.registry import REGISTRY, get, section
from eval.settings import GENERATION_BACKENDS, REFERENCES, EvalSettings
from superfilter.errors import ConfigError, check_limit, one_of

suites.discover()


class _EvalChecks(EvalSettings):
    def validate(self) -> None:
        """Cheap checks at config time: unknown suites, values out of range, each selected suite's own checks."""
        for name in self.suites:
            get(name)
        one_of("eval.reference", [self.reference], REFERENCES)
        if self.equal_tokens and self.reference != "random":
            raise ConfigError(f"eval.equal_tokens=true trains random at this run's token count; it needs "
                              f"eval.reference=random, got {self.reference}")
        one_of("eval.generation.backend", [self.generation.backend], GENERATION_BACKENDS)
        one_of("eval.judge.backend", [self.judge.backend], tuple(JUDGES))
        check_limit("eval.limit", self.limit)
        if self.generation.max_new_tokens < 1:
            raise ConfigError(f"eval.generation.max_new_tokens must be >= 1, got {self.generation.max_new_tokens}")
        if self.judge.backend == "replay" and not self.judge.replay_files:
            raise ConfigError("eval.judge.backend=replay needs eval.judge.replay_files=[<*_reviews_*.json>, ...]")
        if min(self.batch_size, self.lm_eval_batch_size, self.judge.concurrency) < 1:
            raise ConfigError("eval.batch_size, eval.lm_eval_batch_size and eval.judge.concurrency must be >= 1")
        for name in self.suites:
            suite = get(name)
            if suite.validate is not None:
                suite.validate(section(self, name), self)

    def unselected_sections(self) -> tuple[str, ...]:
        """Sections of registered suites that are not run: left out of the eval artifact's key, so registering
        a suite or editing one that is not run keeps existing evaluations cached."""
        return tuple(name for name in REGISTRY if name not in self.suites)


def _build_eval_config() -> type:
    """The shared settings plus one field per registered suite, named after it, typed by its schema."""
    sections = [(name, suite.schema, field(default_factory=suite.schema)) for name, suite in REGISTRY.items()]
    cls = make_dataclass("EvalConfig", sections, bases=(_EvalChecks,))
    cls.__module__ = __name__
    cls.__doc__ = ("Schema of the eval stage: the shared settings and each registered suite's section.\n\n"
                   "EvalConfig() is the paper's evaluation, conf/eval/paper.yaml (a test compares); eval=default cuts "
                   "it to a CPU.")
    return cls


EvalConfig = _build_eval_config()
