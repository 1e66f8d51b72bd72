"""README.md and docs/: a short front page, relative links that resolve, and the blocks other tests run."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 200
FENCE = "```"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")
URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:")
# The README's quickstart, exactly: CI (.ci/run) runs its test command.
QUICKSTART = ["python -m venv .venv && . .venv/bin/activate && bash install.sh && python run.py", "python -m pytest -q"]


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """(line index, level, title) of each Markdown heading outside fenced code blocks."""
    found, in_code = [], False
    for i, line in enumerate(lines):
        if line.startswith(FENCE):
            in_code = not in_code
        elif not in_code and (match := re.match(r"(#+) (.+)", line)):
            found.append((i, len(match.group(1)), match.group(2).strip()))
    return found


def doc_section(title: str) -> str:
    """The text under the one heading `title` in README.md or docs/*.md, up to the next heading of its level or above.

    Tests that run a documented block find it here, whichever page it lives on."""
    sections = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        marks = headings(lines)
        for n, (i, level, text) in enumerate(marks):
            if text == title:
                end = next((j for j, lv, _ in marks[n + 1:] if lv <= level), len(lines))
                sections.append("".join(lines[i + 1 : end]))
    assert len(sections) == 1, f"{len(sections)} sections titled {title!r} in README.md and docs/*.md, expected 1"
    return sections[0]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^{FENCE}{language}\n(.*?)^{FENCE}", text, flags=re.S | re.M)


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of each Markdown link outside code."""
    found, in_code = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith(FENCE):
            in_code = not in_code
        elif not in_code:
            found += [(number, target) for target in LINK.findall(INLINE_CODE.sub("", line))]
    return found


def command_lines(block: str, program: str) -> list[list[str]]:
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith(f"{program} ")]


def test_readme_is_a_front_page():
    n_lines = len(README.read_text(encoding="utf-8").splitlines())
    assert n_lines <= README_MAX_LINES, f"README.md has {n_lines} lines; move detail into docs/"


def test_relative_links_resolve():
    broken = []
    for path in doc_files():
        for number, target in links(path):
            if URL_SCHEME.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md":
                titles = {slug(t) for _, _, t in headings(dest.read_text(encoding="utf-8").splitlines())}
                if anchor not in titles:
                    broken.append(f"{where}: no heading with anchor #{anchor}")
    assert not broken, "\n".join(broken)


def test_quickstart_is_what_ci_runs():
    (block,) = code_blocks(doc_section("Quickstart"), "bash")
    commands = [line.partition(" #")[0].strip() for line in block.splitlines()]
    assert commands == QUICKSTART
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert QUICKSTART[1] in ci, ".ci/run must run the README's test command"


def test_readme_commands_are_among_the_tested_ones():
    # test_cli.test_documented_commands_run runs every `superfilter` line of this block; the README shows some.
    (tested,) = code_blocks(doc_section("Just filter my data"), "bash")
    shown = [c for block in code_blocks(README.read_text(encoding="utf-8"), "bash")
             for c in command_lines(block, "superfilter")]
    assert shown and all(c in command_lines(tested, "superfilter") for c in shown)


def test_doc_section_stops_at_the_next_heading_of_its_level():
    text = doc_section("Just filter my data")
    assert code_blocks(text, "python") and "\n## " not in text
