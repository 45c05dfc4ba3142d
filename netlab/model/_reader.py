"""Reading YAML into plain data while keeping line numbers, and a small typed
reader that reports problems (file, line, field path, fix) instead of raising.

Internal to the model: parsers in lab.py and workloads.py are written against
`Reader` so every field error has the same shape.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterator

import yaml

from .errors import ModelError, Problem, show


# --- YAML with line numbers -------------------------------------------------

class LineMap(dict):
    """A YAML mapping that remembers the line of itself and of each key."""

    __slots__ = ("line", "key_lines")


class LineSeq(list):
    """A YAML sequence that remembers the line of itself and of each item."""

    __slots__ = ("line", "item_lines")


class _Loader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) that records lines and duplicate keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[tuple[Any, int]] = []


def _construct_map(loader: _Loader, node: yaml.MappingNode):
    data = LineMap()
    data.line = node.start_mark.line + 1
    data.key_lines = {}
    yield data  # generator form lets recursive/anchored structures resolve
    data.update(loader.construct_mapping(node))  # also flattens '<<' merges
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        try:
            if key in data.key_lines:
                # Kubernetes' strict decoding rejects duplicate keys; PyYAML
                # would silently keep the last one.
                loader.duplicates.append((key, line))
            else:
                data.key_lines[key] = line
        except TypeError:  # unhashable key; construct_mapping already failed
            pass


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):
    data = LineSeq()
    data.line = node.start_mark.line + 1
    data.item_lines = [n.start_mark.line + 1 for n in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def load_yaml_documents(text: str, source: str) -> list[tuple[Any, int]]:
    """All non-empty documents of a (multi-document) YAML text, with the line
    each starts on. Raises ModelError naming the line of a syntax error."""
    loader = _Loader(text)
    docs: list[tuple[Any, int]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            start = node.start_mark.line + 1 if node is not None else None
            data = loader.construct_document(node) if node is not None else None
            if data is not None:  # empty documents ('---' alone) are skipped, as kubectl does
                docs.append((data, start))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        col = f", column {mark.column + 1}" if mark else ""
        what = e.problem or e.context or "invalid YAML"
        raise ModelError([Problem(source, "", f"YAML syntax error{col}: {what}; fix the YAML "
                                  "(indentation, a missing ':' or an unclosed quote or bracket)", line)]) from None
    except yaml.YAMLError as e:
        raise ModelError([Problem(source, "", f"YAML error: {e}")]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ModelError([Problem(source, "", f"duplicate key {show(k)}; keep only one of them", line)
                          for k, line in loader.duplicates])
    return docs


# --- problem collection -----------------------------------------------------

class Problems:
    """Collects problems for one load; raise_if_any() ends a phase."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, source: str, path: str, message: str, line: int | None = None, subject: str = "") -> None:
        self.items.append(Problem(source, path, message, line, subject))

    def extend(self, problems: list[Problem]) -> None:
        self.items.extend(problems)

    def raise_if_any(self) -> None:
        if self.items:
            raise ModelError(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


def join(path: str, key: Any) -> str:
    """Field path notation: a.b, a[1], and a["x.y/z"] for keys that are not identifiers."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if not key.replace("_", "").isalnum():
        return f"{path}[{show(key)}]"
    return f"{path}.{key}" if path else key


def kind_of(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class Reader:
    """Typed access to one mapping of the input; every mistake becomes a Problem.

    Getters return the value, or the default when the field is absent or bad
    (so parsing carries on and collects every problem in one pass).
    """

    MISSING = object()

    def __init__(self, data: Any, path: str, source: str, problems: Problems,
                 line: int | None = None, subject: str = "", lines: dict[str, int] | None = None):
        self.path = path
        self.source = source
        self.problems = problems
        self.subject = subject
        # every field path read -> its line, so later cross-checks can point at it
        self.lines = lines if lines is not None else {}
        self.line = getattr(data, "line", line)
        self.ok = isinstance(data, dict)
        self.data: dict = data if self.ok else {}
        if path and self.line is not None:
            self.lines.setdefault(path, self.line)

    # -- plumbing --
    def line_of(self, key: Any) -> int | None:
        if isinstance(key, tuple):
            first = key[0]
            seq = self.data.get(first)
            lines = getattr(seq, "item_lines", None)
            if lines and len(key) > 1 and isinstance(key[1], int) and key[1] < len(lines):
                return lines[key[1]]
            key = first
        kl = getattr(self.data, "key_lines", None)
        if kl and key in kl:
            return kl[key]
        return self.line

    def at(self, key: Any) -> str:
        if isinstance(key, tuple):  # a nested field: ("ports", 2) -> ports[2]
            path = self.path
            for k in key:
                path = join(path, k)
            return path
        return join(self.path, key)

    def error(self, key: Any, message: str, line: int | None = None) -> None:
        path = self.at(key) if key is not None else self.path
        self.problems.add(self.source, path, message, line if line is not None else
                          (self.line_of(key) if key is not None else self.line), self.subject)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: str, default: Any = None) -> Any:
        v = self.data.get(key)
        if key in self.data:
            ln = self.line_of(key)
            if ln is not None:
                self.lines.setdefault(self.at(key), ln)
        return default if v is None else v

    def child(self, data: Any, key: Any, line: int | None = None) -> "Reader":
        return Reader(data, self.at(key), self.source, self.problems,
                      line if line is not None else self.line_of(key), self.subject, self.lines)

    def _typed(self, key: str, types: tuple, want: str, required: bool, hint: str) -> Any:
        if not self.has(key):
            if required:
                self.error(key, f"missing; {hint}" if hint else "missing (required)",
                           self.line)
            return self.MISSING
        v = self.raw(key)
        if bool not in types and isinstance(v, bool):
            ok = False
        else:
            ok = isinstance(v, types)
        if not ok:
            fix = ""
            if str in types and isinstance(v, (int, float, bool)):
                fix = f"; quote it: {key}: \"{show(v) if not isinstance(v, bool) else str(v).lower()}\""
            self.error(key, f"{show(v)} is {kind_of(v)}, expected {want}{fix}")
            return self.MISSING
        return v

    # -- getters --
    def text(self, key: str, default: Any = None, *, required: bool = False, hint: str = "",
            check: Callable[[str], str | None] | None = None) -> Any:
        v = self._typed(key, (str,), "a string", required, hint)
        if v is self.MISSING:
            return default
        if check is not None:
            msg = check(v)
            if msg:
                self.error(key, msg)
                return default
        return v

    def integer(self, key: str, default: Any = None, *, required: bool = False, hint: str = "",
            lo: int | None = None, hi: int | None = None, why: str = "") -> Any:
        v = self._typed(key, (int,), "an integer", required, hint)
        if v is self.MISSING:
            return default
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"a value from {lo} to {hi}" if lo is not None and hi is not None else \
                  (f"{lo} or more" if lo is not None else f"{hi} or less")
            self.error(key, f"{v} is out of range; use {rng}{why}")
            return default
        return v

    def boolean(self, key: str, default: Any = None) -> Any:
        v = self._typed(key, (bool,), "true or false", False, "")
        return default if v is self.MISSING else v

    def mapping(self, key: str, *, required: bool = False, hint: str = "") -> "Reader | None":
        v = self._typed(key, (dict,), "a mapping (key: value)", required, hint)
        if v is self.MISSING:
            return None
        return self.child(v, key)

    def items(self, key: str, *, required: bool = False, hint: str = "") -> list[tuple[int, Any, int | None]] | None:
        """Items of a list field as (index, value, line)."""
        v = self._typed(key, (list,), "a list", required, hint)
        if v is self.MISSING:
            return None
        lines = getattr(v, "item_lines", None) or [self.line_of(key)] * len(v)
        return [(i, item, lines[i]) for i, item in enumerate(v)]

    def mappings(self, key: str, *, required: bool = False, hint: str = "", what: str = "item") -> Iterator["Reader"]:
        """Readers over a list of mappings; non-mapping items are reported."""
        items = self.items(key, required=required, hint=hint)
        for i, item, line in items or ():
            if not isinstance(item, dict):
                self.problems.add(self.source, join(self.at(key), i),
                                  f"{show(item)} is {kind_of(item)}, expected a mapping ({what})", line, self.subject)
                continue
            yield Reader(item, join(self.at(key), i), self.source, self.problems, line, self.subject, self.lines)

    def string_map(self, key: str, *, check_key: Callable[[str], str | None] | None = None,
                check_value: Callable[[str], str | None] | None = None) -> dict[str, str]:
        """A mapping of strings to strings (labels, selectors)."""
        r = self.mapping(key)
        out: dict[str, str] = {}
        if r is None:
            return out
        for k, v in r.data.items():
            if not isinstance(k, str):
                r.error(k, f"key {show(k)} is {kind_of(k)}; quote it")
                continue
            if check_key and (msg := check_key(k)):
                r.error(k, msg)
                continue
            if v is None:
                v = ""
            if not isinstance(v, str):
                r.error(k, f"{show(v)} is {kind_of(v)}, expected a string; quote it: {k}: \"{show(v) if not isinstance(v, bool) else str(v).lower()}\"")
                continue
            if check_value and (msg := check_value(v)):
                r.error(k, msg)
                continue
            out[k] = v
        return out

    def strings(self, key: str, *, required: bool = False, hint: str = "") -> list[str] | None:
        items = self.items(key, required=required, hint=hint)
        if items is None:
            return None
        out = []
        for i, item, line in items:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                item = str(item)  # command: [sleep, 10] is common and harmless
            if not isinstance(item, str):
                self.problems.add(self.source, join(self.at(key), i),
                                  f"{show(item)} is {kind_of(item)}, expected a string; quote it", line, self.subject)
                continue
            out.append(item)
        return out

    def fields(self, known: set[str], *, strict: bool, ignored: frozenset[str] = frozenset()) -> None:
        """Report unknown fields.

        strict (our own Lab format): any unknown field is an error.
        lenient (Kubernetes manifests): fields we do not model are accepted and
        ignored, except ones that look like a typo of a field we do use.
        """
        for k in self.data:
            if k in known or k in ignored:
                continue
            ks = str(k)
            close = difflib.get_close_matches(ks, sorted(known), n=1, cutoff=0.8)
            if not close:
                lowered = {x.lower(): x for x in known}
                if ks.lower() in lowered:
                    close = [lowered[ks.lower()]]
            if strict:
                hint = f"did you mean {close[0]}?" if close else f"known fields: {', '.join(sorted(known))}"
                self.error(k, f"unknown field; {hint}")
            elif close:
                self.error(k, f"unknown field; did you mean {close[0]}?")
