"""Loading Kubernetes manifests (`kube-netlab apply -f`), and the pure part
of apply/delete: which objects replace or remove which.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from ._reader import Problems, load_yaml_documents
from .errors import ModelError, Problem
from .workloads import Object, Service, describe, object_key, parse_object, problem_at

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def parse_manifests(text: str, source: str = "<text>", *, path: str = "") -> list[Object]:
    """Objects of a (multi-document) YAML or JSON text. Raises ModelError with
    every problem found; duplicates within the text are an error."""
    problems = Problems()
    objects: list[Object] = []
    for data, line in load_yaml_documents(text, source):
        objects.extend(parse_object(data, source, problems, path=path, line=line))
    problems.extend(duplicates(objects))
    problems.raise_if_any()
    return objects


def object_from_dict(data: dict, source: str = "<dict>") -> Object:
    """One object from its to_dict() form (as the state store keeps it)."""
    problems = Problems()
    objects = parse_object(data, source, problems)
    problems.raise_if_any()
    return objects[0]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        # like kubectl apply -f DIR: the manifest files in it, in name order
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    return [path]


def read_text(path: str | os.PathLike, shown: str | None = None) -> str:
    shown = shown or str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError([Problem(shown, "", "no such file; check the path (relative paths in a lab file "
                                             "are relative to the lab file)")]) from None
    except IsADirectoryError:
        raise ModelError([Problem(shown, "", "is a directory; name a file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError([Problem(shown, "", f"cannot be read: {e}")]) from None


def load_manifests(path_or_text: str | os.PathLike) -> list[Object]:
    """Objects from a file, a directory of .yaml/.yml/.json files, or YAML text.

    A path-like, or a one-line string naming an existing file or directory,
    is read; any other string is parsed as YAML text. All files are checked
    before anything is returned, and every problem is reported at once.
    """
    if isinstance(path_or_text, str) and ("\n" in path_or_text or not os.path.exists(path_or_text)):
        if "\n" not in path_or_text and not _looks_like_yaml(path_or_text):
            raise ModelError([Problem(path_or_text, "", "no such file; check the path")])
        return parse_manifests(path_or_text)
    path = Path(path_or_text)
    if not path.exists():
        raise ModelError([Problem(str(path_or_text), "", "no such file; check the path")])
    problems = Problems()
    objects: list[Object] = []
    for f in _files(path):
        try:
            objects.extend(parse_manifests(read_text(f), str(f)))
        except ModelError as e:
            problems.extend(e.problems)
    problems.extend(duplicates(objects))
    problems.raise_if_any()
    return objects


def manifest_warnings(objects: Iterable[Object]) -> list[Problem]:
    """What is accepted but has no effect, as the API server's warnings (the
    CLI prints them after `Warning: `, and applies anyway)."""
    out = []
    for obj in objects:
        if isinstance(obj, Service) and obj.type == "ExternalName" and obj.selector:
            out.append(problem_at(obj, "spec.selector", f"is ignored: an ExternalName Service has no endpoints, "
                                                        f"DNS answers with a CNAME to {obj.external_name}; "
                                                        "remove the selector"))
    return out


def _looks_like_yaml(s: str) -> bool:
    s = s.strip()
    return s.startswith(("{", "---", "[")) or ": " in s or s.endswith(":")


def duplicates(objects: Sequence[Object]) -> list[Problem]:
    """An object declared twice (same kind, namespace and name) is an error,
    naming both places."""
    first: dict[tuple, Object] = {}
    out = []
    for obj in objects:
        k = object_key(obj)
        if k in first:
            prev = first[k]
            path, line = obj.origin.where("metadata.name")
            where = prev.origin.source + (f":{prev.origin.line}" if prev.origin.line else "")
            out.append(Problem(obj.origin.source, path, f"{describe(obj)} is already defined at {where}; "
                                                        "rename or remove one of them", line))
        else:
            first[k] = obj
    return out


def merge_objects(current: Iterable[Object], incoming: Iterable[Object]) -> list[Object]:
    """What `apply` makes of the desired objects: an incoming object replaces
    the one with the same kind/namespace/name in place, new ones are appended."""
    out = list(current)
    index = {object_key(o): i for i, o in enumerate(out)}
    for obj in incoming:
        k = object_key(obj)
        if k in index:
            out[index[k]] = obj
        else:
            index[k] = len(out)
            out.append(obj)
    return out


def remove_objects(current: Iterable[Object], removed: Iterable[Object]) -> list[Object]:
    """What `delete -f` leaves: current minus objects with the same
    kind/namespace/name (their contents do not matter, as in kubectl)."""
    gone = {object_key(o) for o in removed}
    # deleting a Namespace deletes what is in it, as in Kubernetes
    gone_ns = {name for kind, _, name in gone if kind == "Namespace"}
    return [o for o in current if object_key(o) not in gone and (o.namespace or "") not in gone_ns]
