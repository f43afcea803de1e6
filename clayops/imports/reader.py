"""Reading an upload: bytes → numbered, individually decoded physical lines → CSV records.

See the package docstring (clayops.imports) for the encoding, delimiter and broken-quoting rules.
"""

from __future__ import annotations

import csv
import re
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

SNIFF_BYTES = 1024
CHUNK_BYTES = 256 * 1024
MAX_QUOTE_REPLAYS = 100
BAD_ENCODING = "bad encoding"
_SEP_HINT_RE = re.compile(r"sep=(.)\s*$")

# A physical line: (line number, text fed to csv, problem or None).
Line = tuple[int, str, "str | None"]


class Source:
    """The upload as numbered, individually decoded physical lines."""

    def __init__(self, fh: BinaryIO, max_line_bytes: int):
        self.fh = fh
        self.max_line_bytes = max_line_bytes
        self.bytes_read = 0
        self.head = b""
        self.newline = b"\n"
        self.delimiter = ","
        self.sep_hint = False

    def open(self) -> str:
        """Read the first chunk, detect encoding, line ending and delimiter; a problem message or ""."""
        head = self.fh.read(CHUNK_BYTES)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            return "The file is UTF-16 (or UTF-32) encoded: save it as “CSV UTF-8” and upload it again."
        if head.startswith(b"PK\x03\x04"):
            return "This is an Excel workbook, not a CSV: save it as “CSV UTF-8” and upload that file."
        if head[:SNIFF_BYTES].count(b"\x00") > len(head[:SNIFF_BYTES]) // 10:
            return "The file holds binary data (NUL bytes; UTF-16 without a BOM?): save it as “CSV UTF-8”."
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:]
            self.bytes_read = 3
        self.head = head
        if b"\n" not in head and b"\r" in head:
            self.newline = b"\r"
        sample = head[:SNIFF_BYTES].decode("utf-8", "replace")
        lines = sample.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        hint = _SEP_HINT_RE.match(lines[0])
        if hint:
            self.delimiter, self.sep_hint = hint.group(1), True
        else:
            first = next((line for line in lines if line.strip()), "")
            self.delimiter = sniff_delimiter(first)
        return ""

    def lines(self) -> Iterator[Line]:
        nl, max_line, read = self.newline, self.max_line_bytes, self.fh.read
        width = len(nl)
        number = 0
        tail, self.head = self.head, b""
        while True:
            parts = tail.split(nl)
            tail = parts.pop()
            for raw in parts:
                number += 1
                self.bytes_read += len(raw) + width
                yield _decode(number, raw)
            if len(tail) > max_line:
                # One line longer than any acceptable row: skip to its end without keeping it.
                number += 1
                skipped = len(tail)
                tail = b""
                while chunk := read(CHUNK_BYTES):
                    end = chunk.find(nl)
                    if end >= 0:
                        skipped += end + width
                        tail = chunk[end + width :]
                        break
                    skipped += len(chunk)
                self.bytes_read += skipped
                yield (number, "\n", f"line too long ({skipped:,} bytes)")
                continue
            chunk = read(CHUNK_BYTES)
            if not chunk:
                break
            tail += chunk
        if tail:
            number += 1
            self.bytes_read += len(tail)
            yield _decode(number, tail)


def _decode(number: int, raw: bytes) -> Line:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            number,
            raw.decode("utf-8", "replace") + "\n",
            f"{BAD_ENCODING}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "save the file as CSV UTF-8",
        )
    if "\x00" in text:
        return (number, text.replace("\x00", "") + "\n", f"{BAD_ENCODING}: the line holds NUL bytes")
    return (number, text + "\n", None)


def sniff_delimiter(line: str) -> str:
    counts = dict.fromkeys(",;\t|", 0)
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts, key=lambda ch: counts[ch])  # first wins a tie: comma, semicolon, tab, pipe
    return best if counts[best] else ","


def read_records(
    lines: Iterator[Line], delimiter: str, field_limit: int
) -> Iterator[tuple[list[str] | None, list[Line], str | None]]:
    """(fields, the physical lines they came from, problem) per CSV record.

    csv.reader pulls lines one at a time and never reads ahead, so the lines it pulled for a record
    are exactly the ones in `pending`. A record that hit the end of the file or csv's field size limit
    inside a quoted field has broken quoting: it is reported and its later lines are read again.
    """
    replay: deque[Line] = deque()
    pending: list[Line] = []
    eof_in_record = False
    replays_left = MAX_QUOTE_REPLAYS

    def feed() -> Iterator[str]:
        nonlocal eof_in_record
        while True:
            if replay:
                line = replay.popleft()
            else:
                following = next(lines, None)
                if following is None:
                    eof_in_record = bool(pending)
                    return
                line = following
            pending.append(line)
            yield line[1]

    reader = csv.reader(feed(), delimiter=delimiter)
    while True:
        pending.clear()
        problem = quote_reason = None
        try:
            fields: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            fields = None
            if "field limit" in str(exc):
                quote_reason = f"it grows past {field_limit:,} characters"
                problem = f"field too large (over {field_limit:,} characters)"
            else:
                problem = f"malformed row: {exc}"
        if eof_in_record:
            fields, quote_reason = None, "the file ends inside it"
            problem = "broken quoting: a quoted field is not closed before the end of the file"
        record = list(pending)
        if quote_reason is not None and len(record) > 1:
            # A quoted field that never closes would eat every row after it: read those lines again.
            problem = _broken_quoting(record, quote_reason, replay if replays_left else None)
            replays_left -= 1 if replays_left else 0
        if problem is not None:
            eof_in_record = False
            reader = csv.reader(feed(), delimiter=delimiter)
        yield fields, record, problem


def _broken_quoting(record: list[Line], reason: str, replay: deque[Line] | None) -> str:
    """The problem of a record whose quoted field never closed; its later lines go back to `replay`
    to be read again as rows (None when the replays are used up: they are skipped)."""
    problem = (
        f"broken quoting: the quoted field opened on this line is not closed ({reason}; "
        f"{len(record) - 1:,} more lines read)"
    )
    if replay is not None:
        replay.extendleft(reversed(record[1:]))
        return problem + "; those lines were read again as rows"
    return problem + f"; lines {record[1][0]}–{record[-1][0]} were skipped"
