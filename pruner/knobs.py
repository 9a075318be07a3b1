"""The public API's knobs, each declared once: in the API function's signature and its docstring.

A knob is a parameter of a public function (``pruner.search``'s ``trials``): its name, type and default are
the signature's, its range, choices, CLI flag or own check an ``Annotated`` :class:`Knob`, and its help text
the docstring's ``Args:`` entry (Google style, which ``help()``, IDEs and the docs site show). From that one
declaration come:

- the checks at the API's door (:func:`check_arguments`): every argument's type and range, before any
  compute, as a :class:`~pruner.errors.PrunerError` in API words (``trials= must be an integer >= 1, got '3'``);
- the CLI's options (:func:`cli_parameters`): flag, type, default and help of each, which ``pruner.cli``
  adds to its commands; its messages turn ``trials=`` into ``--trials``;
- the internal settings objects, built from the checked arguments by name (:func:`fields_of`).

So a new knob is one line in the signature plus its help line. Annotations are read without importing what
they name only for type checking (diffusers, torch): such a type is *opaque* here, and a parameter that
admits one declares its own ``check``, so that importing this module, the API or the CLI stays instant.
"""

from __future__ import annotations

import builtins
import collections.abc
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePath
from typing import Annotated, Any

from pruner.errors import PrunerError

__all__ = ["Knob", "Param", "check_arguments", "cli_parameters", "fields_of", "params", "shown", "split_list"]


@dataclass(frozen=True)
class Knob:
    """What a signature cannot say about a parameter: its range, the strings it takes, the CLI flag when it is
    not ``--name``, and a check of its own (called with the value once its type passed, or always when the type
    names a class this module does not import; it raises ``PrunerError`` naming the parameter)."""

    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None
    check: Callable[[Any], None] | None = None


class _Opaque(type):
    """A name the annotations import only for type checking (``UNet2DConditionModel``, ``torch.device``)."""

    def __getattr__(cls, name: str) -> _Opaque:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Opaque(f"{cls.__name__}.{name}", (), {})


class _Names(dict[str, Any]):
    """Evaluation namespace: the module's names, then builtins, then an opaque stand-in for anything else."""

    def __init__(self, module: Mapping[str, Any]) -> None:
        super().__init__()
        self.module = module

    def __missing__(self, name: str) -> Any:
        if name in self.module:
            return self.module[name]
        if hasattr(builtins, name):
            return getattr(builtins, name)
        return _Opaque(name, (), {})


@dataclass(frozen=True)
class Param:
    """One parameter as declared: ``members`` are the types of its union (``type(None)`` when None is allowed;
    ``list`` for a sequence of strings; ``collections.abc.Callable`` for a function)."""

    name: str
    members: tuple[Any, ...]
    default: Any
    knob: Knob
    help: str
    positional: bool

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def opaque(self) -> bool:
        return any(isinstance(m, _Opaque) for m in self.members)


def _members(annotation: Any) -> tuple[tuple[Any, ...], Knob]:
    """The union's member types (containers reduced to their origin) and the ``Knob`` of an ``Annotated``."""
    knob = Knob()
    if typing.get_origin(annotation) is Annotated:
        knob = next((m for m in annotation.__metadata__ if isinstance(m, Knob)), knob)
        annotation = annotation.__origin__
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts: tuple[Any, ...] = typing.get_args(annotation)
    else:
        parts = (annotation,)
    return tuple(_member(p) for p in parts), knob


_LISTS = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)


def _member(annotation: Any) -> Any:
    """A union member as the checks see it: ``list`` for any sequence of strings, a generic's origin."""
    origin = typing.get_origin(annotation) or (type(None) if annotation is None else annotation)
    return list if origin in _LISTS else origin


_ARG = re.compile(r"^(\s*)(\w+)(?: \([^)]*\))?: (.*)$")


def docstring_args(doc: str) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: each name's text on one line."""
    lines = inspect.cleandoc(doc).splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Args:"), len(lines))
    found: dict[str, str] = {}
    indent, name = None, ""
    for line in lines[start:]:
        match = _ARG.match(line)
        if line.strip() and not line.startswith(" "):
            break  # the next section (Returns:, Raises:) or prose
        if match and (indent is None or len(match.group(1)) == indent):
            indent, name = len(match.group(1)), match.group(2)
            found[name] = match.group(3).strip()
        elif name and line.strip():
            found[name] += " " + line.strip()
    return found


@functools.cache
def params(fn: Callable[..., Any]) -> dict[str, Param]:
    """``fn``'s parameters as declared (annotations evaluated without importing type-checking-only names)."""
    names = _Names(fn.__globals__)
    helps = docstring_args(fn.__doc__ or "")
    found = {}
    for p in inspect.signature(fn).parameters.values():
        annotation = (
            eval(p.annotation, fn.__globals__, names) if isinstance(p.annotation, str) else p.annotation
        )  # the module's own annotations
        members, knob = _members(annotation)
        positional = p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        found[p.name] = Param(p.name, members, p.default, knob, helps.get(p.name, ""), positional)
    return found


_WORDS = {bool: "True or False", int: "an integer", float: "a number", str: "a string", Path: "a path",
          PurePath: "a path", type(None): "None", list: "a list of strings", collections.abc.Callable: "a function",
          collections.abc.Mapping: "a mapping"}  # fmt: skip


def _fits(value: Any, member: Any) -> bool:
    """Whether ``value`` is of the (non-opaque) member type; True and 1.0 are not integers, nor True a number."""
    if member is type(None):
        return value is None
    if member is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if member is float:
        return isinstance(value, int | float)
    if member is list:
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    if member is collections.abc.Callable:
        return callable(value)
    if member in (Path, PurePath):
        return isinstance(value, PurePath)
    return isinstance(value, member)


def describe(param: Param) -> str:
    """What ``param`` takes, in words: ``an integer >= 1``, ``one of no, fp16, bf16``, ``a string or None``."""
    if param.knob.choices:
        kinds = [f"one of {', '.join(param.knob.choices)}"]
        kinds += ["None"] if type(None) in param.members else []
    else:
        kinds = list(dict.fromkeys(_WORDS.get(m, getattr(m, "__name__", str(m))) for m in param.members))
    bounds = [f">= {param.knob.min:g}"] if param.knob.min is not None else []
    bounds += [f"<= {param.knob.max:g}"] if param.knob.max is not None else []
    kinds[0] += " " + " and ".join(bounds) if bounds else ""
    return " or ".join(kinds)


def shown(value: Any) -> str:
    """A value as a message quotes it: its repr when short, else its type (a model's repr is pages long)."""
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def split_list(value: str | collections.abc.Sequence[str]) -> tuple[str, ...]:
    """A list knob given as one comma-separated string (as the CLI takes it) or as a sequence of strings."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def _refuse(param: Param, value: Any) -> PrunerError:
    return PrunerError(f"{param.name}= must be {describe(param)}, got {shown(value)}")


def check_value(param: Param, value: Any) -> None:
    """Refuse ``value`` for ``param`` unless its type, range and choices fit, then run the knob's own check."""
    concrete = [m for m in param.members if not isinstance(m, _Opaque)]
    if not param.opaque and not any(_fits(value, m) for m in concrete):
        raise _refuse(param, value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = param.knob.min, param.knob.max
        if (low is not None and not value >= low) or (high is not None and not value <= high):  # NaN too
            raise _refuse(param, value)
    if value is not None and param.knob.choices:
        items = split_list(value) if list in param.members else [value]
        if not items or any(item not in param.knob.choices for item in items):
            raise _refuse(param, value)
    if param.knob.check is not None:
        param.knob.check(value)


def check_arguments(fn: Callable[..., Any], arguments: Mapping[str, Any]) -> None:
    """Check each of ``arguments`` (``locals()`` at the top of ``fn``, or some of them) against ``fn``'s
    declaration; the first that does not fit raises ``PrunerError`` naming it (``trials= must be ...``)."""
    declared = params(fn)
    for name, value in arguments.items():
        if name in declared:
            check_value(declared[name], value)


def fields_of(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that dataclass ``cls`` has fields for: a settings object built from the
    checked arguments by name, so that the API does not list its knobs a second time to pass them on."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def flag(param: Param) -> str:
    """The CLI's name for ``param``: its knob's ``flag``, else ``--name-with-dashes``."""
    return param.knob.flag or "--" + param.name.replace("_", "-")


def _cli_type(param: Param, default: Any) -> Any:
    """The type the CLI parses ``param`` as: a bool, int or float when the API takes one, else a string."""
    scalar = next((m for m in (bool, int, float) if m in param.members), str)
    return scalar | None if type(None) in param.members or default is None else scalar


def _cli_help(param: Param, declared: Mapping[str, Param]) -> str:
    """The docstring's help with ``name`` of a parameter written as its flag (other literals plain), and the
    range said."""
    text = re.sub(r"``([^`]+)``", lambda m: flag(declared[m.group(1)]) if m.group(1) in declared else m.group(1),
                  param.help)  # fmt: skip
    low, high = param.knob.min, param.knob.max
    if low is not None and high is not None:
        text = f"{text.rstrip('.')}; from {low:g} to {high:g}."
    elif low is not None:
        text = f"{text.rstrip('.')}; at least {low:g}."
    return text


def cli_parameters(fn: Callable[..., Any], skip: collections.abc.Collection[str] = (),
                   defaults: Mapping[str, Any] | None = None) -> list[inspect.Parameter]:  # fmt: skip
    """``fn``'s knobs as typer parameters (keyword-only, real types, ``Annotated`` with a ``typer.Option`` or
    ``typer.Argument``): a required positional parameter is an argument unless ``defaults`` gives the CLI a
    default for it; a False bool is an on-only flag; a list is one comma-separated string."""
    import typer

    declared = params(fn)
    out = []
    for p in declared.values():
        if p.name in skip:
            continue
        default = (defaults or {}).get(p.name, p.default)
        text = _cli_help(p, declared)
        if default is inspect.Parameter.empty:
            info: Any = typer.Argument(help=text, show_default=False)
        else:
            info = typer.Option(flag(p), help=text, show_default=default is not None and not isinstance(default, bool))
        if isinstance(default, tuple | list):
            default = ",".join(default)
        annotation = Annotated[_cli_type(p, default), info]  # type: ignore[valid-type]
        out.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    return out
