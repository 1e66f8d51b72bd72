"""Every prompt template by name; scoring, training and evaluation all render text through this module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from superfilter.data import Example
from superfilter.errors import ConfigError

SCORING_MODES = ("none", "alpaca", "chat")
TEMPLATES = ("alpaca", "vicuna_v1.1", "chat")

# Superfiltering's scoring prompt: no template at all [authors' PROMPT_DICT_NONE].
NONE_WITH_INPUT = "{instruction}\n{input}\n"
NONE_NO_INPUT = "{instruction}\n"

# Stanford Alpaca's template (also Cherry LLM's scoring template); the response follows "### Response:" directly.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_DIRECT_PREFIX = "### Response:"  # Cherry's response-only text is "### Response:" + output

# FastChat's vicuna_v1.1 conversation: system, then "USER: q ASSISTANT: a</s>" per turn.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; `trainable` pieces are assistant replies (the only tokens with a loss)."""

    text: str
    trainable: bool


def user_text(instruction: str, input: str) -> str:
    return f"{instruction}\n\n{input}" if input else instruction


def turns(example: Example) -> list[tuple[str, str]]:
    """All (user, assistant) turns of a record; the last one carries the Alpaca `input`."""
    return [*example.history, (user_text(example.instruction, example.input), example.output)]


def scoring_prompt(example: Example, mode: str, tokenizer: Any = None) -> tuple[str, str]:
    """(conditioning prompt, response-only prefix) for the last turn of `example` under a scoring mode.

    The conditioned text is prompt + output; the direct text is prefix + output.
    """
    if mode == "none":
        history = "".join(f"{u}\n{a}\n" for u, a in example.history)
        template = NONE_WITH_INPUT if example.input else NONE_NO_INPUT
        return history + template.format(instruction=example.instruction, input=example.input), ""
    if mode == "alpaca":
        if example.history:
            raise ConfigError("score.prompt=alpaca has no multi-turn form; use prompt=none or prompt=chat")
        template = ALPACA_WITH_INPUT if example.input else ALPACA_NO_INPUT
        return template.format(instruction=example.instruction, input=example.input), ALPACA_DIRECT_PREFIX
    if mode == "chat":
        return chat_prompt(tokenizer, turns(example)[:-1], turns(example)[-1][0], example.system), ""
    raise ConfigError(f"score.prompt must be one of {SCORING_MODES}, got {mode!r}")


def chat_prompt(tokenizer: Any, history: Sequence[tuple[str, str]], user: str, system: str = "") -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("the tokenizer has no chat template; choose another template/prompt mode")
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for u, a in history:
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render(example: Example, template: str, tokenizer: Any = None) -> list[Segment]:
    """The full training text of a record as segments; every assistant reply is trainable."""
    all_turns = turns(example)
    if template == "alpaca":
        if example.history:
            raise ConfigError("template=alpaca has no multi-turn form; use vicuna_v1.1 or chat")
        prompt = (ALPACA_WITH_INPUT if example.input else ALPACA_NO_INPUT).format(
            instruction=example.instruction, input=example.input
        )
        return [Segment(prompt, False), Segment(example.output + _eos(tokenizer), True)]
    if template == "vicuna_v1.1":
        segments = [Segment((example.system or VICUNA_SYSTEM) + " ", False)]
        for u, a in all_turns:
            segments += [Segment(f"USER: {u} ASSISTANT:", False), Segment(f" {a}{_eos(tokenizer)}", True)]
        return segments
    if template == "chat":
        segments = []
        rendered = ""
        for i, (u, _reply) in enumerate(all_turns):
            prompt = chat_prompt(tokenizer, all_turns[:i], u, example.system)
            full = _chat_full(tokenizer, all_turns[: i + 1], example.system)
            if not (prompt.startswith(rendered) and full.startswith(prompt)):
                raise ConfigError("the tokenizer's chat template does not render turns as a growing prefix")
            segments += [Segment(prompt[len(rendered):], False), Segment(full[len(prompt):], True)]
            rendered = full
        return segments
    raise ConfigError(f"template must be one of {TEMPLATES}, got {template!r}")


def _chat_full(tokenizer: Any, all_turns: Sequence[tuple[str, str]], system: str) -> str:
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for u, a in all_turns:
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def generation_prompt(
    instruction: str, template: str, tokenizer: Any = None,
    history: Sequence[tuple[str, str]] = (), system: str = "", input: str = "",
) -> str:
    """The text a finetuned model continues at evaluation: the training template up to the reply."""
    if template == "chat":
        return chat_prompt(tokenizer, list(history), user_text(instruction, input), system)
    example = Example.create(instruction, input, "", history, system)
    return "".join(s.text for s in render(example, template, tokenizer)[:-1])


def _eos(tokenizer: Any) -> str:
    return (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
