"""Arena-Hard-Auto's judgment files (model_judgment/<judge>/<model>.jsonl): read, checked, and each game's prompt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from superfilter.errors import DataError


def jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) of each non-blank line; fails naming the file and line that is not JSON."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not JSON: {e}") from e


def required_field(path: Path, number: int, record: Any, name: str) -> Any:
    """record[name], or an error naming the file, line and field."""
    if not isinstance(record, dict) or name not in record:
        raise DataError(f"{path}:{number}: missing field {name!r}")
    return record[name]


def read_judgments(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, record) of a judgment file; fails naming the file, line and field of the first malformed record."""
    records: list[tuple[int, dict[str, Any]]] = []
    for number, r in jsonl_records(path):
        model = required_field(path, number, r, "model")
        if records and model != records[0][1]["model"]:
            raise DataError(f"{path}:{number}: field 'model' is {model!r}, but line {records[0][0]} has "
                            f"{records[0][1]['model']!r}: one model per judgment file")
        if "uid" not in r and "question_id" not in r:
            raise DataError(f"{path}:{number}: missing field 'uid'")
        games = required_field(path, number, r, "games")
        if not isinstance(games, list) or len(games) != 2:
            raise DataError(f"{path}:{number}: field 'games' must hold the two games (baseline as A, then as B)")
        for k, game in enumerate(games):
            if game is not None and (not isinstance(game, dict) or "score" not in game):
                raise DataError(f"{path}:{number}: missing field 'games[{k}].score'")
        records.append((number, r))
    return records


def game_prompt_and_judgment(path: Path, number: int, game: dict[str, Any] | None) -> tuple[str, str] | None:
    """(the judge's user prompt, its judgment text) of one game, or None for a game that was never judged."""
    if game is None:
        return None
    if "user_prompt" in game:  # v0.1-era layout
        return str(game["user_prompt"]), str(game.get("judgment") or "")
    try:
        user = next(m["content"] for m in game["prompt"] if m["role"] == "user")
    except (KeyError, TypeError, StopIteration) as e:
        raise DataError(f"{path}:{number}: missing field 'games[].prompt' (user message)") from e
    judgment = game.get("judgment")
    return str(user), str(judgment.get("answer", "") if isinstance(judgment, dict) else judgment or "")
