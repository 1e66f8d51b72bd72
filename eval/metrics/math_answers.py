"""Final answers of math solutions: the Qwen2.5-Math toolkit's extraction and a symbolic comparison (math-verify).

Extraction follows the toolkit's order: Minerva's "final answer is $X$. I hope", else the last `\\boxed{}` (or
`\\fbox{}`), else the text after the last "the answer is" / "final answer is", else the last number. Comparison:
equal after normalisation (\\dfrac → \\frac, degrees, \\left/\\right, dollar signs ...), else numerically equal
(relative tolerance 1e-4, the toolkit's), else equal as mathematical objects under math-verify (1/2 = 0.5 = 2/4,
intervals, sets of solutions, units and \\text{} dropped).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

BOX_COMMANDS = ("\\boxed", "\\fbox")
MINERVA_START, MINERVA_END = "final answer is $", "$. I hope"
ANSWER_PHRASES = ("he answer is", "final answer is")  # "The answer is" / "the answer is", as the toolkit
NUMBER = re.compile(r"-?\d*\.?\d+")
THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
LATEX_SCIENTIFIC = re.compile(r"(-?\d*\.?\d+)\\(?:times|cdot)10\^\{?(-?\d+)\}?")
CONSTANT_SUBSCRIPT = re.compile(r"(?<![\\A-Za-z])([EeIi])_")
BASE_SUBSCRIPT = re.compile(r"\d_\{?\d+\}?")
UNIT = re.compile(r"\s*\\(?:text|mbox|mathrm)\{[^{}]*\}(\^\{?\d\}?)?\s*$")
REL_TOL = 1e-4
# Plain-text scientific notation (Minerva's "4.5e33") in LaTeX, which math-verify reads.
SCIENTIFIC = re.compile(r"(\d)\s*e\s*([+-]?\d+)\b")
# Spellings that differ in LaTeX but not in value; math-verify gets the normalised text.
REWRITES = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""), ("\\!", ""),
            ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", ""), ("\\%", ""), ("\\neq", "\\ne"),
            ("\\leq", "\\le"), ("\\geq", "\\ge"))


@dataclass(frozen=True)
class Scored:
    answer: str  # the extracted final answer ('' when none was found)
    how: str  # boxed | minerva | answer_is | last_number | none
    correct: bool


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} or \\fbox{...} (nested braces kept), or of "\\boxed 5"; None without one."""
    start, command = max((text.rfind(c), c) for c in BOX_COMMANDS)
    if start < 0:
        return None
    after = text[start + len(command) :]
    if after.startswith(" "):  # "\boxed 5": up to the next dollar sign or line end
        return re.split(r"[$\n]", after, maxsplit=1)[0].strip()
    if not after.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(after):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return after[1:i]
    return None  # unbalanced: the answer was cut off


def extract_answer(text: str) -> tuple[str, str]:
    """(final answer, how it was found) of one model output; ('', 'none') when there is none."""
    if MINERVA_START in text and MINERVA_END in text:
        return _clean(text.split(MINERVA_START, 1)[1].split(MINERVA_END, 1)[0]), "minerva"
    boxed = last_boxed(text)
    if boxed is not None:
        return _clean(boxed), "boxed"
    for phrase in ANSWER_PHRASES:
        if phrase in text:
            tail = text.rsplit(phrase, 1)[1].strip().split("\n\n", 1)[0]
            return _clean(tail), "answer_is"
    numbers = NUMBER.findall(text.replace(",", ""))
    if numbers:
        return numbers[-1], "last_number"
    return "", "none"


def _clean(answer: str) -> str:
    answer = re.sub(r"\n\s*", "", answer).strip()
    answer = answer.lstrip(":").strip()
    return answer.rstrip(".").rstrip("/").strip()


def gold_text(value: Any) -> str:
    """A reference answer as text: numbers as written in LaTeX (AMC's 27.0 → 27), a list's first element
    (OlympiadBench's final_answer), surrounding dollar signs dropped."""
    if isinstance(value, list):
        if not value:
            return ""
        value = value[0]
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value).strip().strip("$").strip()


def normalize(answer: str) -> str:
    """Spelling-only differences removed: \\dfrac, degrees, \\left/\\right, dollar and percent signs, a trailing
    unit in \\text{}/\\mbox{}, a leading "x =", spaces."""
    text = answer.strip()
    for old, new in REWRITES:
        text = text.replace(old, new)
    unitless = UNIT.sub("", text).strip()
    text = unitless or text
    lhs, eq, rhs = text.partition("=")
    if eq and "=" not in rhs and len(lhs.strip()) <= 2 and rhs.strip():  # "x = 5" → "5", as the toolkit
        text = rhs
    return re.sub(r"\s+", "", text).rstrip(".")


def _number(text: str) -> float | None:
    """A plain number (58,500; 4.5e33; 2.88\\times10^{-19}); None for anything else, lists included (7,14,18)."""
    text = text.replace("{,}", ",")
    if THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    latex = LATEX_SCIENTIFIC.fullmatch(text)
    if latex:
        text = f"{latex.group(1)}e{latex.group(2)}"
    try:
        return float(text)
    except ValueError:
        return None


def _numbers_equal(a: float, b: float) -> bool:
    # Integers must match exactly; the toolkit's relative tolerance would let 13535 equal 13536.
    if a.is_integer() and b.is_integer():
        return a == b
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0)


def is_equivalent(prediction: str, gold: str) -> bool:
    """Whether an extracted answer equals the reference: as text, as a number, or as a mathematical object."""
    if not prediction.strip() or not gold.strip():
        return False
    pred, ref = normalize(prediction), normalize(gold)
    if pred == ref:
        return True
    a, b = _number(pred), _number(ref)
    if a is not None and b is not None:
        return _numbers_equal(a, b)
    if BASE_SUBSCRIPT.search(pred) or BASE_SUBSCRIPT.search(ref):  # math-verify reads 4210_{5} as 4210
        return False
    return _math_verify(pred, ref)


def _for_math_verify(text: str) -> str:
    text = SCIENTIFIC.sub(r"\1\\times 10^{\2}", text)
    # math-verify reads a subscripted E, e, I or i as the constant and drops the subscript (E_{1} = e): rename them.
    return CONSTANT_SUBSCRIPT.sub(lambda m: ("\\epsilon" if m.group(1) in "Ee" else "\\iota") + "_", text)


def _math_verify(prediction: str, gold: str) -> bool:
    # deferred: math-verify (the `math` extra) loads sympy and an ANTLR parser, about a second
    from math_verify import parse, verify

    parsed = [parse("\\boxed{" + _for_math_verify(text) + "}") for text in (gold, prediction)]
    # [expression, text] when math-verify understood the answer; a bare [text] is a fragment it could not read, and
    # two unreadable fragments must not count as equal.
    if any(len(p) < 2 for p in parsed):
        return False
    return bool(verify(parsed[0], parsed[1]))


def score(output: str, gold: str) -> Scored:
    """The extracted answer of one output and whether it equals the reference answer."""
    answer, how = extract_answer(output)
    return Scored(answer, how, is_equivalent(answer, gold))
