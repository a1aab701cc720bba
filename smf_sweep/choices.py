"""String choices typed as `Literal[...]` next to their fields, checked in `__post_init__` from the
Literal's own values, so the allowed values are written once, where the field is:

    loss_on: Literal["all", "answer"] = "all"      # in a dataclass
    def __post_init__(self):
        check_choices(self, "train: ")             # ValueError: train: loss_on must be all or answer, got 'x'

Names chosen from a registry (selectors, optimizers, methods, probes) are not Literals: the
registry is the list (registry.UnknownName names what it holds)."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal


def choices(tp: Any) -> tuple | None:
    """The values a `Literal[...]` (or `Literal[...] | None`) annotation allows; None for other types."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        lits = [a for a in args if typing.get_origin(a) is Literal]
        if lits:
            return tuple(v for a in lits for v in typing.get_args(a)) + ((None,) if type(None) in args else ())
    return None


def one_of(allowed: tuple) -> str:
    """('a', 'b', 'c') -> 'a, b or c'."""
    names = ["null" if a is None else str(a) for a in allowed]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_choices(obj: Any, prefix: str = "") -> None:
    """ValueError naming the field and its allowed values when a Literal-typed field of dataclass
    `obj` holds anything else."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = choices(hints.get(f.name))
        value = getattr(obj, f.name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{prefix}{f.name} must be {one_of(allowed)}, got {value!r}")
