"""The model's one exception type.

Every problem names where it is (file, line, field path), the bad value and
the fix, so a user can correct a lab file without reading our code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is, and what to do about it."""

    source: str            # file name as the user gave it, or "<text>"/"<dict>"
    path: str              # field path inside the document, e.g. spec.nodes[1].name
    message: str           # the bad value and the fix
    line: int | None = None
    subject: str = ""      # which object, e.g. 'Deployment "echo"' in a multi-object file

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        parts = [where]
        if self.subject:
            parts.append(self.subject)
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)


class ModelError(ValueError):
    """Raised when a lab file or manifest is invalid; carries every problem found.

    str(error) is one line per problem, ready to print.
    """

    def __init__(self, problems: Iterable[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem("<input>", "", problems)]
        problems = list(problems)
        # file by file (in the order first seen), then by line: reads like a compiler's output
        first = {p.source: i for i, p in reversed(list(enumerate(problems)))}
        self.problems: list[Problem] = sorted(problems, key=lambda p: (first[p.source], p.line or 0))
        super().__init__("\n".join(str(p) for p in self.problems))


def show(value: Any) -> str:
    """A value as it would appear in YAML/JSON: strings quoted, true/false/null."""
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)
