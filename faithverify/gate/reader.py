"""Reading one TOML table with typed getters whose errors name the file, the line, the table and the key.

:mod:`tomllib` gives values but no line numbers; :class:`KeyLines` finds them in the text and :class:`Table`
puts them into every :class:`~faithverify.gate.config.GateConfigError` it raises.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from faithverify.errors import FaithverifyError


class GateConfigError(FaithverifyError):
    """The gate's config file is missing, not TOML, or has an unknown key or a bad value."""


def located(origin: str, line: int | None, message: str) -> GateConfigError:
    """An error about ``origin`` at ``line`` (left out when unknown)."""
    where = f"{origin}, line {line}" if line else origin
    return GateConfigError(f"{where}: {message}")


class KeyLines:
    """Line numbers of keys and table headers in TOML text, for error messages (tomllib gives none).

    A light scan, not a parser: it tracks ``[table]`` and ``[[array]]`` headers and ``key =`` lines. A key it
    cannot place (inside an inline table, say) just gets no line number.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_\-]+))\s*=""")

    def __init__(self, text: str) -> None:
        self.keys: dict[tuple[str, int | None, str], int] = {}
        self.headers: dict[tuple[str, int | None], int] = {}
        counts: dict[str, int] = {}
        section: tuple[str, int | None] = ("", None)
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                name = header.group(2).replace('"', "").replace("'", "").replace(" ", "")
                if header.group(1) == "[[":
                    counts[name] = counts.get(name, 0) + 1
                    section = (name, counts[name] - 1)
                else:
                    section = (name, None)
                self.headers.setdefault(section, number)
                continue
            key = self._KEY.match(line)
            if key:
                name = next(g for g in key.groups() if g is not None)
                self.keys.setdefault((*section, name), number)

    def line(self, section: str, index: int | None, key: str | None) -> int | None:
        if key is not None and (section, index, key) in self.keys:
            return self.keys[(section, index, key)]
        return self.headers.get((section, index))


class Table:
    """One TOML table being read: typed getters that name the file, line, table and key in every error."""

    def __init__(
        self,
        values: Mapping[str, Any],
        label: str,
        origin: str,
        lines: KeyLines,
        section: str = "",
        index: int | None = None,
    ) -> None:
        self.values, self.label, self.origin = values, label, origin
        self.lines, self.section, self.index = lines, section, index

    def error(self, key: str | None, message: str, labelled: bool = True) -> GateConfigError:
        prefix = f"{self.label}: " if labelled and self.section else ""
        return located(self.origin, self.lines.line(self.section, self.index, key), f"{prefix}{message}")

    def reject_unknown(self, allowed: Iterable[str], context: str = "") -> None:
        """A key outside ``allowed`` is an error naming it, its table and the nearest allowed key."""
        allowed = list(allowed)
        for key in self.values:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    key,
                    f"unknown key {key!r} in {self.label}{context}{hint} (allowed: {', '.join(sorted(allowed))})",
                    labelled=False,
                )

    def _get(self, key: str) -> Any:
        return self.values.get(key)

    def number(
        self, key: str, default: float | None, *, low: float | None = None, high: float | None = None,
        low_open: bool = False, what: str = "a number",
    ) -> float | None:  # fmt: skip
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(key, f"{key} must be {what}, got {show(value)}")
        if (low is not None and (value < low or (low_open and value == low))) or (
            high is not None and value > high
        ):
            raise self.error(key, f"{key} must be {what}, got {value!r}")
        return float(value)

    def required_number(self, key: str, **kwargs: Any) -> float:
        value = self.number(key, None, **kwargs)
        if value is None:
            raise self.error(None, f"needs {key} ({kwargs.get('what', 'a number')})")
        return value

    def integer(self, key: str, default: int | None, minimum: int) -> int | None:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"{key} must be an integer >= {minimum}, got {show(value)}")
        return value

    def string(self, key: str, default: str | None, choices: Sequence[str] | None = None) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"{key} must be a string, got {show(value)}")
        if choices is not None and value not in choices:
            raise self.error(key, f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"{key} must be true or false, got {show(value)}")
        return value


def show(value: Any) -> str:
    """A TOML value for an error message: the value and its type, or just the type for arrays and tables."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}.get(
        type(value), "a table" if isinstance(value, dict) else type(value).__name__
    )
    text = json.dumps(value) if isinstance(value, str | int | float | bool) else kind
    return text if text == kind else f"{text} ({kind})"
