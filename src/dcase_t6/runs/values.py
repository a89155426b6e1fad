"""Typed values from what YAML or the command line gives: ``convert`` turns one value into the type of a config
field (int, float, bool, str, a list of names, a mapping of names to numbers, or one of them | None), and says
in one line which key is not of its type and how to write it."""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Callable

from dcase_t6.common.errors import UserError


def shown(value, quoted: bool = True) -> str:
    """A value for a message: its repr (``str`` unquoted), cut to 60 characters."""
    text = repr(value) if quoted else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


_NULLS = ("", "null", "none", "~")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def convert(value: Any, hint, key: str, source: str):
    """One value as type ``hint`` (str, int, float, bool, list[str], or one of them | None)."""
    arguments = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULLS):
            return None
        hint = next(argument for argument in arguments if argument is not type(None))
        arguments = typing.get_args(hint)
    converted = _CONVERTERS[typing.get_origin(hint) or hint](value)
    if converted is _INVALID:
        expected = _EXPECTED[typing.get_origin(hint) or hint]
        raise UserError(f"{source}: config key '{key}' = {shown(value)} is not {expected}; "
                        f"e.g. --set {key}={_EXAMPLES[typing.get_origin(hint) or hint]}")
    return converted


_INVALID = object()


def _to_number(value, kind: type):
    """``value`` as ``kind`` (int or float): numbers (an int only from a whole float) and numeric strings (``1e9``,
    which YAML reads as a string, is the int 1000000000 as YAML's ``1.0e9`` is)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return _INVALID
    if isinstance(value, str):
        try:
            value = int(value.strip()) if kind is int and value.strip().lstrip("+-").isdigit() else float(value.strip())
        except ValueError:
            return _INVALID
    if kind is int and isinstance(value, float):
        return int(value) if value.is_integer() else _INVALID
    try:
        return kind(value)
    except OverflowError:  # an int of more than 308 digits as a float: out of every range, said so by check()
        return math.inf


def _to_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    return True if text in _TRUE else False if text in _FALSE else _INVALID


def _to_str(value):
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _INVALID


def _to_weights(value):
    """A mapping of names to numbers: a mapping, or ``a=1,b=0.5`` (``--set dataset_weights=clotho=2,macs=0.5``)."""
    if isinstance(value, str):
        items = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep for _, sep, _ in items):
            return _INVALID
        value = {name.strip(): number for name, _, number in items}
    if not isinstance(value, dict) or not all(isinstance(name, str) for name in value):
        return _INVALID
    numbers = {name: _to_number(number, float) for name, number in value.items()}
    return _INVALID if any(number is _INVALID for number in numbers.values()) else numbers


def _to_str_list(value):
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    return _INVALID


_CONVERTERS: dict[Any, Callable] = {int: lambda value: _to_number(value, int),
                                    float: lambda value: _to_number(value, float),
                                    bool: _to_bool, str: _to_str, list: _to_str_list, dict: _to_weights}
_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a list of names (or one comma-separated string)", dict: "a mapping of names to numbers"}
_EXAMPLES = {int: "3", float: "0.5", bool: "true", str: "NAME", list: "a,b", dict: "a=1,b=0.5"}
