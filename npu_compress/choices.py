"""Closed choices as types, parsed once at the edge (CLI, profile file, checkpoint), compared as members inside.

    >>> Choice  # base of Structure, FormatKind, Bound, Phase, Precision, ...
    >>> NMPattern.parse("2:4")
    NMPattern(n=2, m=4)
    >>> str(NMPattern(2, 4))
    '2:4'

A :class:`Choice` is a ``str`` enum whose ``str()`` and format are its value, so tables and JSON show
``compute``, not ``Bound.COMPUTE``; ``Choice.parse`` raises a typed error listing the allowed values.
"""
from __future__ import annotations

import enum
from typing import Any, NamedTuple, TypeVar

from .errors import NpuCompressError

C = TypeVar("C", bound="Choice")


class ChoiceError(NpuCompressError, ValueError):
    """A closed choice (structure, format, phase, N:M pattern ...) got a value outside its set."""


class Choice(str, enum.Enum):
    """A ``str`` enum that prints as its value and parses with a message naming the allowed values."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> list[str]:
        """The allowed spellings, in declaration order (what a CLI offers as ``choices``)."""
        return [m.value for m in cls]

    @classmethod
    def parse(cls: type[C], value: Any, what: str | None = None, error: type[Exception] | None = None) -> C:
        """``value`` (a member or its spelling) as a member; otherwise ``error`` (default
        :class:`ChoiceError`) naming ``what`` (default: the class name) and the allowed values."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise (error or ChoiceError)(f"unknown {what or cls.__name__} {value!r}; allowed: "
                                         f"{', '.join(cls.values())}") from None


class NMPattern(NamedTuple):
    """N kept of every M consecutive weights (``2:4``). A tuple, so ``n, m = pattern`` works."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @classmethod
    def parse(cls, value: Any, what: str = "N:M pattern", error: type[Exception] | None = None) -> "NMPattern":
        """From ``"2:4"``, ``(2, 4)`` or a pattern; needs integers ``1 <= N < M``."""
        if isinstance(value, str):
            parts = value.split(":")
            ok = len(parts) == 2 and all(p.strip().isdigit() for p in parts)
            pair = tuple(int(p) for p in parts) if ok else None
        else:
            try:
                pair = tuple(int(v) for v in value) if not isinstance(value, (bool, int, float)) else None
            except (TypeError, ValueError):
                pair = None
        if pair is None or len(pair) != 2 or not 1 <= pair[0] < pair[1]:
            raise (error or ChoiceError)(f"{what} {value!r} must be N:M with integers 0 < N < M, e.g. 2:4")
        return cls(*pair)


__all__ = ["Choice", "ChoiceError", "NMPattern"]
