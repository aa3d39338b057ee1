"""SQL, one module per aggregate. Every function takes the caller's connection, so the
caller decides the transaction; none commits on its own."""

from typing import TypeVar

T = TypeVar("T")


def returned_row(row: T | None) -> T:
    """The row an ``INSERT … RETURNING`` gave back (it always gives one)."""
    if row is None:
        raise RuntimeError("INSERT … RETURNING gave no row")
    return row
