"""Ids from the outside world. The URL converter `id`: a database id, 1 to 18 digits, so a URL with
a 20-digit number is a 404 rather than an integer-out-of-range error from PostgreSQL (a 500)."""


class IdConverter:
    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


def parse_id(value: object) -> int | None:
    """A database id from a form value or a JSON field: an int, or a string of ASCII digits, from 1
    to 2**63 - 1 (what an id column holds); None for anything else (bools, floats, signs, spaces)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value < 2**63 else None
