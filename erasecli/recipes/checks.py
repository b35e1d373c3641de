"""Value checks of recipe fields. Each section lists its own in a `CHECKS` class attribute:
{field name: (Check, ...)}, so a new section brings its checks with it. A failed check reads
"<key> must be <need>, got <value>"."""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

@dataclass(frozen=True)
class Check:
    """One rule on a field's value: `ok(value)` must hold; `need` completes "<key> must be ..."."""

    ok: Callable[[Any], bool]
    need: str
    each: bool = False  # apply to every element of a tuple field, naming `key[i]`


Checks = Mapping[str, tuple[Check, ...]]


def at_least(n: float) -> Check:
    return Check(lambda v: v >= n, f">= {n}")


def at_most(n: float) -> Check:
    return Check(lambda v: v <= n, f"<= {n}")


def above(n: float) -> Check:
    return Check(lambda v: v > n, f"> {n}")


def between(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Check:
    """lo <= v <= hi; an open end excludes its bound ("in (0, 1]")."""
    return Check(lambda v: (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi),
                 f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}")


def one_of(*names: str) -> Check:
    return Check(lambda v: v in names, "one of " + ", ".join(repr(n) for n in names))


NOT_BLANK = Check(lambda v: bool(v.strip()), "non-empty")
NON_EMPTY = Check(lambda v: len(v) > 0, "a non-empty list")


def template_of(name: str) -> Check:
    """Each string must contain `{name}` and no other `{...}` field, so `.format(name=...)` cannot fail."""

    def ok(text: str) -> bool:
        try:
            fields_ = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError:  # an unmatched '{' or '}'
            return False
        return fields_ == {name}

    return Check(ok, f"a template containing '{{{name}}}' and no other '{{...}}'", each=True)
