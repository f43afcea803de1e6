"""URL converters. `id`: a database id, 1 to 18 digits, so a URL with a 20-digit number is a 404
rather than an integer-out-of-range error from PostgreSQL (a 500)."""


class IdConverter:
    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)
