"""Prompt templates and class-name lists: load them by set name, from a list, or from a file.

The built-in sets live as plain text in ``prompts/`` (installed as ``clipkit.prompts``),
one entry per line, ``#`` comment lines allowed; ``prompts/SOURCES.md`` says where each
came from. A template holds ``{}`` where the class name goes::

    >>> load_templates("imagenet7")[0]
    'itap of a {}.'
    >>> fill("a photo of a {}.", "cat")
    'a photo of a cat.'
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path

__all__ = [
    "load_templates",
    "load_classnames",
    "available_template_sets",
    "available_class_sets",
    "default_templates_for",
    "fill",
    "check_classnames",
]

_PACKAGE = "clipkit.prompts"

# Class-name set -> the template set CLIP used for it (everything else: "simple").
_DEFAULT_TEMPLATES = {"imagenet": "imagenet", "mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100"}


def _resource_names(suffix: str) -> list[str]:
    return sorted(
        entry.name[: -len(suffix)]
        for entry in files(_PACKAGE).iterdir()
        if entry.name.endswith(suffix)
    )


def available_template_sets() -> list[str]:
    """Names accepted by :func:`load_templates` (``imagenet``, ``imagenet7``, ``simple``, ...)."""
    return _resource_names("_templates.txt")


def available_class_sets() -> list[str]:
    """Names accepted by :func:`load_classnames` (``imagenet``, ``mnist``, ``cifar10``, ``cifar100``)."""
    return _resource_names("_classes.txt")


def default_templates_for(classes) -> str:
    """The template set CLIP used with a named class set; ``"simple"`` for anything else."""
    if isinstance(classes, str):
        return _DEFAULT_TEMPLATES.get(classes.lower(), "simple")
    return "simple"


def _parse_lines(text: str) -> list[str]:
    """Non-empty lines, stripped, without ``#`` comment lines."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _load(spec, kind: str, suffix: str, available) -> tuple[list[str], str]:
    """Entries from a set name, a path, or an iterable of str; also says where they came from."""
    if isinstance(spec, (str, os.PathLike)):
        name = os.fspath(spec)
        resource = files(_PACKAGE).joinpath(f"{name.lower()}{suffix}")
        path = Path(name).expanduser()
        if "/" not in name and os.sep not in name and resource.is_file():
            return _parse_lines(resource.read_text(encoding="utf-8")), f"{kind} set {name!r}"
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read {kind} file {str(path)!r}: {e}") from e
            return _parse_lines(text), f"{kind} file {str(path)!r}"
        raise ValueError(
            f"{name!r} is neither a built-in {kind} set ({', '.join(available())}) nor an existing "
            f"file; pass a set name, a path to a UTF-8 text file with one entry per line, or a list of str"
        )
    if isinstance(spec, (bytes, bytearray)) or not isinstance(spec, Iterable):
        raise TypeError(f"{kind}s must be a set name, a file path or a list of str, "
                        f"got {type(spec).__name__}")
    entries = list(spec)
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise TypeError(f"{kind} {i} is {type(entry).__name__}, not str: {entry!r:.80}")
    return entries, f"{kind} list"


def load_templates(spec="simple") -> list[str]:
    """Templates from a set name (:func:`available_template_sets`), a file path (one
    template per line, ``#`` comments) or a list of str. Each must contain ``{}``."""
    templates, origin = _load(spec, "template", "_templates.txt", available_template_sets)
    if not templates:
        raise ValueError(f"no templates in the {origin}")
    for i, t in enumerate(templates):
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(
                f"template {i} of the {origin} has no '{{}}' placeholder for the class name: {t!r}; "
                "write it like 'a photo of a {}.'"
            )
    return templates


def load_classnames(spec) -> list[str]:
    """Class names from a set name (``imagenet``, ``mnist``, ``cifar10``, ``cifar100``),
    a file path (one name per line, ``#`` comments) or a list of str."""
    names, origin = _load(spec, "class", "_classes.txt", available_class_sets)
    check_classnames(names)
    return names


def _is_builtin(names: list[str]) -> bool:
    """True for the official ImageNet list: it has two duplicate pairs, kept for parity
    with the paper's numbers (see prompts/SOURCES.md)."""
    if len(names) != 1000:
        return False
    text = files(_PACKAGE).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return names == _parse_lines(text)


def check_classnames(names: list[str], allow_duplicates: bool = False) -> None:
    """Raise ValueError for an empty list, an empty name, or repeated names.

    Repeated names would give two classes the same head row (and the same label), which
    is almost always a mistake. The official ImageNet list is the exception: it repeats
    ``missile`` and ``sunglasses`` and is accepted as is.
    """
    if not names:
        raise ValueError("the class-name list is empty; give at least one class name")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"class name {i} is empty: {n!r}")
    counts = Counter(names)
    dups = [n for n, k in counts.items() if k > 1]
    if dups and not allow_duplicates and not _is_builtin(names):
        shown = ", ".join(f"{n!r} (x{counts[n]})" for n in dups[:10])
        more = f" and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise ValueError(f"duplicate class names: {shown}{more}; each class needs a distinct name")
    if len(names) == 1:
        import warnings

        warnings.warn(f"only one class ({names[0]!r}): every image gets it with probability 1, so accuracy "
                      "and probabilities say nothing; give at least two class names", SingleClassWarning,
                      stacklevel=3)


class SingleClassWarning(UserWarning):
    """A zero-shot head over one class: every prediction is that class."""


def fill(template: str, classname: str) -> str:
    """The prompt for one class: every ``{}`` replaced by the name (as ``str.format`` with
    positional ``{}`` fields, but braces inside class names are left alone)."""
    return template.replace("{}", classname)
