"""The one duplicate-finder: which values of a sequence repeat, and where."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Duplicate:
    """A value that occurs more than once, with every 0-based position it occurs at (ascending)."""

    value: Hashable
    positions: tuple[int, ...]

    @property
    def first(self) -> int:
        """Position of its first occurrence."""
        return self.positions[0]

    @property
    def second(self) -> int:
        """Position of its first repetition."""
        return self.positions[1]


def duplicates(items: Iterable[Hashable]) -> list[Duplicate]:
    """Every repeated value, in the order of its first repetition (where a reader scanning top-down meets it)."""
    positions: dict[Hashable, list[int]] = {}
    for position, item in enumerate(items):
        positions.setdefault(item, []).append(position)
    repeated = [Duplicate(value, tuple(found)) for value, found in positions.items() if len(found) > 1]
    return sorted(repeated, key=lambda duplicate: duplicate.second)


def first_duplicate(items: Iterable[Hashable]) -> Duplicate | None:
    """The first value (by first repetition) that occurs twice, or None when every value is unique."""
    found = duplicates(items)
    return found[0] if found else None
