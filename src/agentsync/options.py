"""The base of every per-component config dataclass: typed fields, docs, validation helpers.

Components (strategies, tasks, the optimizer, comm, the launcher) each own a keyword-only
dataclass deriving from :class:`Options`. The field's docstring is the line under it, as in
CleanRL's ``Args``; :func:`field_docs` reads them back for ``agentsync list`` and the docs.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types as types_mod
import typing
from functools import cache

from agentsync.errors import ConfigError


@dataclasses.dataclass(kw_only=True)
class Options:
    """A component's options; subclasses add fields with a one-line docstring under each."""

    def validate(self, section: str) -> None:
        """Raise :class:`ConfigError` naming ``section.field`` when a value is not allowed."""


def check(condition: bool, field: str, allowed: str, value: object) -> None:
    """Raise a one-line :class:`ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field} must be {allowed} (got {value!r})")


def choice(value: str, field: str, allowed: typing.Iterable[str]) -> None:
    allowed = sorted(allowed)
    check(value in allowed, field, "one of " + ", ".join(allowed), value)


@cache
def field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(cls: type, section: str, key: str, value: object) -> object:
    """Convert a TOML or ``--set`` value to the declared type of ``cls.key``."""
    types = field_types(cls)
    name = f"{section}.{key}" if section else key
    if key not in types:
        known = ", ".join(f"{section}.{k}" for k in types if k != "name") or "(none)"
        raise ConfigError(f"unknown option {section}.{key}; allowed: {known}")
    kind = types[key]
    if isinstance(kind, types_mod.UnionType):  # ``int | None``: a value given is never None
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            number = kind(value)
            if kind is int and isinstance(value, float) and value != number:
                raise ValueError(value)
            return number
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {kind.__name__} (got {value!r})") from None
    raise ConfigError(f"{name} has unsupported type {kind}")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field, walking the class hierarchy."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
