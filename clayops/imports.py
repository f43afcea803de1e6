"""CSV lead imports: `create_import` stores an upload and enqueues the job, `run_import` is the job body.

The file is streamed: it is read in chunks, split into physical lines as bytes, each line decoded on
its own (so one bad line is one bad row, not a failed import) and fed to `csv.reader`, which joins
the lines of a quoted field that spans several of them. Memory stays flat whatever the file size.

Rules
-----
Encoding
    UTF-8, with or without a BOM. A line that is not valid UTF-8 (or holds NUL bytes) makes its row
    an error ("bad encoding"); the other rows import. A file that starts with a UTF-16/32 BOM, looks
    like an Excel workbook or is mostly NUL bytes in its first KB (UTF-16 without a BOM) fails as a
    whole, with a message saying how to export it. Line endings: LF, CRLF or (old Excel for Mac) CR.
Delimiter
    Comma, semicolon, tab or pipe, whichever occurs most (outside quotes) in the first line of the
    first KB; comma on a tie or when none occurs. An Excel hint line `sep=;` is honoured and skipped.
Lines
    Physical lines, header = line 1. A row's line is the line it starts on.
Header and column mapping
    The first non-blank row. Names are compared trimmed, lower-cased, with `_`/`-` read as spaces
    and runs of spaces collapsed; see COLUMN_ALIASES (e.g. "Work Email", "company_website",
    "Given Name"). When several columns map to the same field, a row takes the first non-empty one.
    Every column is kept in the payload under its original name (blank names become `column_<n>`,
    repeated names get `_2`, `_3` ...). Without an email or a domain column the import fails.
Extra and missing values
    A row with fewer values than the header gets empty strings for the missing columns. Values past
    the last column are kept, as a list, under `_extra` when any of them is non-empty (trailing
    delimiters are dropped). Neither is an error. Blank rows are skipped and not counted.
Normalisation
    email: trimmed, lower-cased, `mailto:` removed, must be `local@domain.tld` (at most 254
    characters). domain: from the domain column with scheme, user info, `www.`, path, query and port
    removed, lower-cased, IDN to punycode; else from the email, unless it is a free-mail or social
    domain (NOT_COMPANY_DOMAINS: gmail.com is nobody's company). The row needs a valid email or a
    domain. An invalid email with a domain to fall back on is dropped (`email` is "").
Payload
    `Lead.row` = {original column: value, ..., "email": <normalised>, "domain": <normalised>}
    (the normalised keys overwrite an original column with exactly that name). A row whose compact
    JSON, plus PAYLOAD_HEADROOM bytes for clayops' own keys, exceeds CLAYOPS_MAX_PAYLOAD_BYTES is
    rejected and never sent.
Fingerprint (`lead_fingerprint`)
    sha256 hex of the normalised email when there is one, else of
    "domain:" + domain + "|" + lower(first name) + "|" + lower(last name) + "|" + lower(company)
    (each trimmed). Lead.fingerprint is unique, so a fingerprint is imported once, ever.
Duplicates
    Kept out by the database, not by a set in memory: each batch is inserted with
    bulk_create(ignore_conflicts=True), then one `fingerprint IN (...)` query tells, for every row,
    whether the lead now holding its fingerprint is this import's lead from this very line (valid)
    or another (duplicate: an earlier line of this file, or an older lead). Rows repeated inside one
    batch are caught by the batch's dict first. The same query makes a re-run count exactly as the
    first run did.
Broken quoting
    A quoted field that is never closed swallows the following lines until the end of the file or
    until it passes csv's field size limit (set to CLAYOPS_MAX_PAYLOAD_BYTES while an import runs).
    Its row becomes an error ("broken quoting") and the lines it swallowed are read again as rows,
    at most MAX_QUOTE_REPLAYS times per import (which bounds the work a hostile file can cause).
Counts
    total_rows = valid_rows + invalid_rows + duplicate_rows. At most MAX_STORED_ERRORS row errors
    are stored per import (all are counted), each with the raw row cut to RAW_MAX_CHARS.
Row limit
    Rows past CLAYOPS_IMPORT_MAX_ROWS are not read. The import ends `done` with `error` saying so;
    the rows before stay imported. (`error` is set whenever there is something the operator must
    read: on `failed` it says why nothing more happened.)
Claims and re-runs
    `run_import` claims pending → running with a conditional UPDATE. `heartbeat_at`, written with
    every batch, is the claim token: every batch starts with an UPDATE ... WHERE heartbeat_at = <the
    one this worker wrote>, so a worker that lost its claim stops at its next batch and rolls it
    back. A running import whose heartbeat is older than CLAYOPS_IMPORT_STALE_SECONDS (worker died)
    may be claimed again: its counts and stored row errors are reset and the file is read from the
    start; leads already created are recognised by fingerprint and line, not created twice, and
    those still `queued` are enqueued again (the submission job skips leads already taken).
    `requeue_stale_imports` (for the maintenance tick) enqueues the job again for such imports.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import timedelta
from functools import partial
from typing import Any, BinaryIO

import django_rq
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from .delivery import enqueue_leads
from .models import ImportRowError, Lead, LeadImport, Webhook

try:  # IDNA 2008 with UTS 46 mapping; installed with httpx. Python's own codec (IDNA 2003) otherwise.
    import idna
except ImportError:  # pragma: no cover
    idna = None

log = logging.getLogger("clayops.imports")

ALLOWED_EXTENSIONS = (".csv", ".txt")
# Rows per transaction; after each the counts move and the new leads are enqueued.
BATCH_ROWS = 1000
MAX_STORED_ERRORS = 10_000
RAW_MAX_CHARS = 500
SNIFF_BYTES = 1024
CHUNK_BYTES = 256 * 1024
# Bytes kept free under the payload limit for the keys clayops adds when sending (clayops_lead_id).
PAYLOAD_HEADROOM = 256
MAX_QUOTE_REPLAYS = 100
BAD_ENCODING = "bad encoding"
# A running import whose heartbeat is older than this is taken to be abandoned by a dead worker.
STALE_SECONDS = 300
# The RQ timeout of an import job (the default queue's 600 s is too short for a million rows).
JOB_TIMEOUT = 6 * 3600

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "email": ("email", "e mail", "work email", "email address", "e mail address"),
    "domain": ("domain", "website", "company domain", "url", "company website", "website url"),
    "company": ("company", "company name", "organization", "organisation", "account", "account name"),
    "first_name": ("first name", "firstname", "first", "given name"),
    "last_name": ("last name", "lastname", "surname", "family name"),
}
_ALIAS_TO_FIELD = {alias: field for field, aliases in COLUMN_ALIASES.items() for alias in aliases}

# Not anyone's company domain: free mail (from an email) and social sites (in a "url" column).
_FREE_MAIL = """
    gmail.com googlemail.com yahoo.com yahoo.co.uk yahoo.fr yahoo.de ymail.com hotmail.com
    hotmail.co.uk hotmail.fr outlook.com live.com live.co.uk msn.com aol.com icloud.com me.com
    mac.com protonmail.com proton.me pm.me gmx.com gmx.de gmx.net web.de mail.com yandex.ru
    yandex.com mail.ru qq.com 163.com 126.com zoho.com fastmail.com hey.com tutanota.com
    orange.fr free.fr laposte.net btinternet.com comcast.net t-online.de libero.it
"""
_SOCIAL = "linkedin.com facebook.com twitter.com x.com instagram.com"
NOT_COMPANY_DOMAINS = frozenset(_FREE_MAIL.split() + _SOCIAL.split())

_DOMAIN_RE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})")
_EMAIL_LOCAL_RE = re.compile(r"[^\s@<>()\[\],;:\"\\]{1,64}")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")
_SEP_HINT_RE = re.compile(r"sep=(.)\s*$")


class ImportRefused(ValidationError):
    """The upload was refused before any row was read; the message says why, for the operator."""


class _ClaimLost(Exception):
    """Another worker re-claimed this import (our heartbeat was thought stale): stop quietly."""


# --- Normalisation ------------------------------------------------------------------------------


def _ascii_host(host: str) -> str:
    """A valid lower-case ASCII (punycode) host name, or ""."""
    host = host.strip().strip(".").lower()
    if not host.isascii():
        try:
            if idna is not None:
                host = idna.encode(host, uts46=True).decode("ascii")
            else:  # pragma: no cover
                host = host.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
            return ""
    if len(host) > 253 or not _DOMAIN_RE.fullmatch(host):
        return ""
    return host


def normalize_domain(value: str) -> str:
    """`https://www.Acme.com:443/about?x` → `acme.com`; "" when no valid host name is left."""
    value = value.strip().lower()
    if not value:
        return ""
    value = _SCHEME_RE.sub("", value, count=1)
    value = value.removeprefix("//")
    for stop in "/?#":
        value = value.split(stop, 1)[0]
    value = value.rsplit("@", 1)[-1]  # user info, or an email typed into the website column
    value = value.split(":", 1)[0]
    host = _ascii_host(value)
    if host.startswith("www.") and host.count(".") > 1:
        host = host[4:]
    return host


def split_email(value: str) -> tuple[str, str]:
    """(normalised email, its ASCII domain), or ("", "") when it does not look like an email."""
    email = value.strip().lower()
    if email.endswith(">") and "<" in email:  # Jane Doe <jane@acme.com>
        email = email[email.rindex("<") + 1 : -1].strip()
    email = email.removeprefix("mailto:")
    local, at, domain = email.rpartition("@")
    if not at or len(email) > 254 or not _EMAIL_LOCAL_RE.fullmatch(local):
        return "", ""
    host = _ascii_host(domain)
    if not host:
        return "", ""
    return email, host


def lead_fingerprint(
    *, email: str, domain: str, first_name: str = "", last_name: str = "", company: str = ""
) -> str:
    """The de-duplication key (see the module docstring). Takes normalised email and domain."""
    if email:
        key = email
    else:
        names = "|".join(value.strip().lower() for value in (first_name, last_name, company))
        key = f"domain:{domain}|{names}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _header_key(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").replace("_", " ").replace("-", " ").lower().split())


# --- Upload -------------------------------------------------------------------------------------


def default_webhook() -> Webhook | None:
    """The webhook new imports send to: the first usable one by priority."""
    usable = Webhook.objects.filter(is_active=True, is_full=False, broken_reason="")
    return usable.order_by("priority", "id").first()


def _job_id(import_id: int) -> str:
    return f"clayops-import-{import_id}"


def _enqueue_import(import_id: int) -> None:
    django_rq.get_queue("default").enqueue(
        "clayops.jobs.import_leads", import_id, job_id=_job_id(import_id), job_timeout=JOB_TIMEOUT
    )


def _human_bytes(n: int) -> str:
    if n < 1000:
        return f"{n:,} bytes"
    size, unit = next((n / 1000**i, u) for i, u in ((3, "GB"), (2, "MB"), (1, "KB")) if n >= 1000**i)
    return f"{size:,.1f}".removesuffix(".0") + f" {unit}"


def create_import(*, file: Any, filename: str, by: Any = None, webhook: Webhook | None = None) -> LeadImport:
    """Store an uploaded CSV under MEDIA_ROOT/imports/ and enqueue its import after commit.

    `file` is a Django UploadedFile or any binary file object. Raises ImportRefused for a name not
    ending in .csv/.txt, an empty file, or one over CLAYOPS_IMPORT_MAX_BYTES; nothing is stored then.
    """
    name = os.path.basename(str(filename).replace("\\", "/")).strip()
    if not name.lower().endswith(ALLOWED_EXTENSIONS):
        raise ImportRefused(
            f"“{name or 'the file'}” is not a CSV file: upload a .csv or .txt file "
            "(in Excel: File › Save As › CSV UTF-8).",
            code="extension",
        )
    upload = file if isinstance(file, File) else File(file, name=name)
    try:
        size = upload.size
    except (AttributeError, OSError, ValueError):
        raise ImportRefused(f"Could not tell the size of “{name}”: upload it as a regular file.") from None
    if not size:
        raise ImportRefused(f"“{name}” is empty.", code="empty")
    limit = settings.CLAYOPS_IMPORT_MAX_BYTES
    if size > limit:
        raise ImportRefused(
            f"“{name}” is {_human_bytes(size)}; files up to {_human_bytes(limit)} are accepted "
            "(CLAYOPS_IMPORT_MAX_BYTES). Split it into smaller files.",
            code="too_large",
        )
    imp = LeadImport(
        filename=name[:255],
        uploaded_by=by,
        webhook=webhook if webhook is not None else default_webhook(),
        size_bytes=size,
        state=LeadImport.State.PENDING,
    )
    imp.file.save(name, upload, save=False)  # streamed to storage in chunks
    try:
        with transaction.atomic():
            imp.save()
            transaction.on_commit(partial(_enqueue_import, imp.pk))
    except BaseException:
        imp.file.delete(save=False)
        raise
    return imp


def requeue_stale_imports() -> int:
    """Enqueue the job again for imports whose job was lost; for the maintenance tick.

    Pending imports older than the stale period (the enqueue after commit failed, or Redis lost the
    job) and running imports whose heartbeat is stale (the worker died), unless their job is still
    waiting in the queue. Harmless if the old job turns out to be alive: the claim decides.
    """
    from rq.job import JobStatus

    cutoff = timezone.now() - timedelta(seconds=_stale_seconds())
    ids = list(
        LeadImport.objects.filter(
            Q(state=LeadImport.State.PENDING, created_at__lt=cutoff)
            | Q(state=LeadImport.State.RUNNING, heartbeat_at__lt=cutoff)
        ).values_list("pk", flat=True)
    )
    queue = django_rq.get_queue("default")
    waiting = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
    requeued = 0
    for pk in ids:
        job = queue.fetch_job(_job_id(pk))
        if job is not None and job.get_status(refresh=False) in waiting:
            continue
        _enqueue_import(pk)
        requeued += 1
    return requeued


# --- Job ----------------------------------------------------------------------------------------


def _stale_seconds() -> int:
    return getattr(settings, "CLAYOPS_IMPORT_STALE_SECONDS", STALE_SECONDS)


def _claim(import_id: int):
    """Take the import: pending → running, or re-take a running one whose worker went silent.

    Returns the heartbeat written (the claim token), or None when another worker has it or it is
    finished.
    """
    now = timezone.now()
    claimed = LeadImport.objects.filter(pk=import_id, state=LeadImport.State.PENDING).update(
        state=LeadImport.State.RUNNING, started_at=now, heartbeat_at=now, error=""
    )
    if claimed:
        return now
    stale = now - timedelta(seconds=_stale_seconds())
    with transaction.atomic():
        claimed = (
            LeadImport.objects.filter(pk=import_id, state=LeadImport.State.RUNNING)
            .filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True))
            .update(
                heartbeat_at=now,
                bytes_read=0,
                total_rows=0,
                valid_rows=0,
                invalid_rows=0,
                duplicate_rows=0,
                error="",
            )
        )
        if claimed:
            ImportRowError.objects.filter(lead_import_id=import_id).delete()
    if claimed:
        log.warning("import %s: re-claimed from a worker that stopped sending heartbeats", import_id)
        return now
    return None


def run_import(import_id: int) -> LeadImport | None:
    """The import job: stream the file into leads, batch by batch. Safe to run twice."""
    token = _claim(import_id)
    imp = LeadImport.objects.filter(pk=import_id).first()
    if imp is None:
        log.info("import %s: no longer exists", import_id)
        return None
    if token is None:
        log.info("import %s: %s, nothing to do", import_id, imp.state)
        return imp
    run = _ImportRun(imp, token)
    try:
        run.run()
    except _ClaimLost:
        log.warning("import %s: another worker re-claimed it; this run stops", import_id)
    except Exception as exc:
        run.fail(f"Import stopped by an unexpected error: {type(exc).__name__}: {exc}")
        raise
    imp.refresh_from_db()
    return imp


# --- Reading the file ---------------------------------------------------------------------------

# A physical line: (line number, text fed to csv, problem or None).
_Line = tuple[int, str, "str | None"]


class _Source:
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
            self.delimiter = _sniff_delimiter(first)
        return ""

    def lines(self) -> Iterator[_Line]:
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


def _decode(number: int, raw: bytes) -> _Line:
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


def _sniff_delimiter(line: str) -> str:
    counts = dict.fromkeys(",;\t|", 0)
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts, key=lambda ch: counts[ch])  # first wins a tie: comma, semicolon, tab, pipe
    return best if counts[best] else ","


def _records(
    lines: Iterator[_Line], delimiter: str, field_limit: int
) -> Iterator[tuple[list[str] | None, list[_Line], str | None]]:
    """(fields, the physical lines they came from, problem) per CSV record.

    csv.reader pulls lines one at a time and never reads ahead, so the lines it pulled for a record
    are exactly the ones in `pending`. A record that hit the end of the file or csv's field size limit
    inside a quoted field has broken quoting: it is reported and its later lines are read again.
    """
    replay: deque[_Line] = deque()
    pending: list[_Line] = []
    eof_in_record = False
    replays_left = MAX_QUOTE_REPLAYS

    def feed() -> Iterator[str]:
        nonlocal eof_in_record
        while True:
            if replay:
                line = replay.popleft()
            else:
                line = next(lines, None)
                if line is None:
                    eof_in_record = bool(pending)
                    return
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
            problem = (
                f"broken quoting: the quoted field opened on this line is not closed ({quote_reason}; "
                f"{len(record) - 1:,} more lines read)"
            )
            if replays_left:
                replays_left -= 1
                replay.extendleft(reversed(record[1:]))
                problem += "; those lines were read again as rows"
            else:
                problem += f"; lines {record[1][0]}–{record[-1][0]} were skipped"
        if problem is not None:
            eof_in_record = False
            reader = csv.reader(feed(), delimiter=delimiter)
        yield fields, record, problem


# --- The run ------------------------------------------------------------------------------------


class _ImportRun:
    def __init__(self, imp: LeadImport, token):
        self.imp = imp
        self.token = token
        self.webhook_id = imp.webhook_id
        self.payload_limit = settings.CLAYOPS_MAX_PAYLOAD_BYTES
        self.max_rows = settings.CLAYOPS_IMPORT_MAX_ROWS
        self.batch_rows = getattr(settings, "CLAYOPS_IMPORT_BATCH_ROWS", BATCH_ROWS)
        self.total = self.valid = self.invalid = self.duplicate = 0
        self.stored_errors = 0
        self.batch: dict[str, dict[str, Any]] = {}  # fingerprint → the new lead's varying fields
        self.writer = _LeadWriter(lead_import_id=imp.pk, webhook_id=imp.webhook_id)
        self.errors: list[ImportRowError] = []
        self.unflushed = 0
        self.source: _Source | None = None

    # Reading

    def run(self) -> None:
        old_limit = csv.field_size_limit(max(self.payload_limit, 1024))
        try:
            try:
                fh = self.imp.file.open("rb")
            except (FileNotFoundError, ValueError):
                missing = "The uploaded file is missing from storage: upload it again."
                self.finish(LeadImport.State.FAILED, missing)
                return
            with fh:
                self.source = _Source(fh, max_line_bytes=2 * self.payload_limit)
                problem = self.source.open()
                if problem:
                    self.finish(LeadImport.State.FAILED, problem)
                    return
                self.read_rows()
        finally:
            csv.field_size_limit(old_limit)

    def read_rows(self) -> None:
        source = self.source
        records = _records(source.lines(), source.delimiter, csv.field_size_limit())
        header = None
        skip_hint = source.sep_hint
        for fields, lines, problem in records:
            if problem is None:  # a header that is not UTF-8 is read with replacement characters
                problem = next((ln[2] for ln in lines if ln[2] and not ln[2].startswith(BAD_ENCODING)), None)
            if problem is None and not "".join(fields).strip():
                continue
            if skip_hint:
                skip_hint = False
                continue
            if problem is not None:
                message = f"Could not read the header row (line {lines[0][0]}): {problem}"
                self.finish(LeadImport.State.FAILED, message)
                return
            header = fields
            break
        if header is None:
            self.finish(LeadImport.State.FAILED, "The file is empty: there is no header row.")
            return
        if not self.map_columns(header):
            return
        limit_line = None
        for fields, lines, problem in records:
            if problem is None:
                for line in lines:
                    if line[2] is not None:
                        problem = line[2]
                        break
                else:
                    if not "".join(fields).strip():
                        continue
            if self.total >= self.max_rows:
                limit_line = lines[0][0]
                break
            self.total += 1
            self.unflushed += 1
            if problem is not None:
                self.row_error(lines, problem)
            else:
                self.add_row(fields, lines)
            if self.unflushed >= self.batch_rows:
                self.flush()
        self.flush()
        if limit_line is not None:
            message = (
                f"Row limit reached: only the first {self.max_rows:,} rows were imported "
                f"(CLAYOPS_IMPORT_MAX_ROWS); the file was not read from line {limit_line:,} on."
            )
        elif not self.total:
            message = "The file has a header row but no data rows."
        else:
            message = ""
        self.finish(LeadImport.State.DONE, message)

    def map_columns(self, header: list[str]) -> bool:
        names: list[str] = []
        seen: set[str] = set()
        for i, raw in enumerate(header, start=1):
            name = raw.replace("\ufeff", "").strip() or f"column_{i}"
            base, n = name, 1
            while name in seen:
                n += 1
                name = f"{base}_{n}"
            seen.add(name)
            names.append(name)
        self.names = names
        cols: dict[str, list[int]] = {field: [] for field in COLUMN_ALIASES}
        for i, raw in enumerate(header):
            field = _ALIAS_TO_FIELD.get(_header_key(raw))
            if field:
                cols[field].append(i)
        self.email_cols, self.domain_cols = cols["email"], cols["domain"]
        self.company_cols = cols["company"]
        self.first_cols, self.last_cols = cols["first_name"], cols["last_name"]
        if not self.email_cols and not self.domain_cols:
            shown = ", ".join(f"“{name}”" for name in names[:20]) + (" …" if len(names) > 20 else "")
            self.finish(
                LeadImport.State.FAILED,
                f"No email or domain column found (columns: {shown}; delimiter “{self.source.delimiter}”). "
                f"Name a column {' / '.join(COLUMN_ALIASES['email'][:4])} "
                f"or {' / '.join(COLUMN_ALIASES['domain'][:5])}.",
            )
            return False
        return True

    # Rows

    def add_row(self, fields: list[str], lines: list[_Line]) -> None:
        ncols = len(self.names)
        extra = None
        if len(fields) < ncols:
            fields.extend([""] * (ncols - len(fields)))
        elif len(fields) > ncols:
            extra = fields[ncols:]
            del fields[ncols:]
        row: dict[str, Any] = dict(zip(self.names, fields, strict=True))
        if extra and "".join(extra).strip():
            row["_extra"] = extra

        raw_email = _first(fields, self.email_cols)
        raw_domain = _first(fields, self.domain_cols)
        email, email_domain = split_email(raw_email) if raw_email else ("", "")
        domain = normalize_domain(raw_domain) if raw_domain else ""
        if domain in NOT_COMPANY_DOMAINS:
            domain = ""
        if not domain and email_domain not in NOT_COMPANY_DOMAINS:
            domain = email_domain
        if not email and not domain:
            if raw_email:
                problem = f"invalid email {_quote(raw_email)}"
                if raw_domain:
                    problem += f" and no company domain in {_quote(raw_domain)}"
            elif raw_domain:
                problem = f"invalid domain {_quote(raw_domain)}"
            else:
                problem = "missing both email and domain"
            self.row_error(lines, problem)
            return
        row["email"] = email
        row["domain"] = domain

        size = len(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size + PAYLOAD_HEADROOM > self.payload_limit:
            self.row_error(
                lines,
                f"row exceeds Clay's {self.payload_limit / 1000:g} KB payload limit ({size:,} bytes as JSON)",
            )
            return

        company = _first(fields, self.company_cols)
        fingerprint = lead_fingerprint(
            email=email,
            domain=domain,
            first_name=_first(fields, self.first_cols),
            last_name=_first(fields, self.last_cols),
            company=company,
        )
        if fingerprint in self.batch:
            self.duplicate += 1
            return
        self.batch[fingerprint] = {
            "line": lines[0][0],
            "row": row,
            "fingerprint": fingerprint,
            "email": email,
            "domain": domain,
            "company": company[:255],
        }

    def row_error(self, lines: list[_Line], problem: str) -> None:
        self.invalid += 1
        if self.stored_errors >= MAX_STORED_ERRORS:
            return
        self.stored_errors += 1
        raw = "".join(line[1] for line in lines[:20])[: RAW_MAX_CHARS + 1].rstrip("\r\n")
        if len(raw) > RAW_MAX_CHARS:
            raw = raw[: RAW_MAX_CHARS - 1] + "…"
        self.errors.append(
            ImportRowError(lead_import_id=self.imp.pk, line=lines[0][0], error=problem[:300], raw=raw)
        )

    # Writing

    def flush(self) -> None:
        """Write the batch in one transaction, fenced by the claim token; enqueue new leads after commit."""
        now = timezone.now()
        new_ids: list[tuple[int, int]] = []  # (line, lead id)
        ours = 0
        with transaction.atomic():
            if not self._fence(heartbeat_at=now):
                raise _ClaimLost
            if self.batch:
                # In fingerprint order: two imports inserting the same fingerprints take their
                # locks in the same order, so PostgreSQL never sees them deadlock.
                self.writer.insert(self.batch[fingerprint] for fingerprint in sorted(self.batch))
                holders = (
                    Lead.objects.filter(fingerprint__in=list(self.batch))
                    .order_by()
                    .values_list("pk", "fingerprint", "lead_import_id", "line", "state")
                )
                for pk, fingerprint, import_id, line, state in holders:
                    if import_id == self.imp.pk and line == self.batch[fingerprint]["line"]:
                        ours += 1
                        if state == Lead.State.QUEUED:
                            new_ids.append((line, pk))
            if self.errors:
                ImportRowError.objects.bulk_create(self.errors)
            LeadImport.objects.filter(pk=self.imp.pk).update(
                **self._counts(valid=self.valid + ours, duplicate=self.duplicate + len(self.batch) - ours)
            )
        self.valid += ours
        self.duplicate += len(self.batch) - ours
        self.token = now
        self.batch = {}
        self.errors = []
        self.unflushed = 0
        if new_ids:
            # After the commit above; inside an outer transaction django-rq defers it to that commit.
            enqueue_leads(pk for _, pk in sorted(new_ids))  # in file order

    def _fence(self, **values: Any) -> bool:
        running = LeadImport.State.RUNNING
        ours = LeadImport.objects.filter(pk=self.imp.pk, state=running, heartbeat_at=self.token)
        return bool(ours.update(**values))

    def _counts(self, *, valid: int | None = None, duplicate: int | None = None) -> dict[str, int]:
        return {
            "total_rows": self.total,
            "valid_rows": self.valid if valid is None else valid,
            "invalid_rows": self.invalid,
            "duplicate_rows": self.duplicate if duplicate is None else duplicate,
            "bytes_read": self.source.bytes_read if self.source else 0,
        }

    def finish(self, state: str, error: str) -> None:
        now = timezone.now()
        if not self._fence(state=state, error=error, finished_at=now, heartbeat_at=now, **self._counts()):
            raise _ClaimLost
        self.token = now

    def fail(self, error: str) -> None:
        """Record an unexpected failure, if this run still holds the import (best effort).

        The counts stay those of the last committed batch: they describe what is in the database.
        """
        try:
            self._fence(state=LeadImport.State.FAILED, error=error[:2000], finished_at=timezone.now())
        except Exception:
            log.exception("import %s: could not record the failure", self.imp.pk)


class _LeadWriter:
    """INSERT INTO lead ... ON CONFLICT (fingerprint) DO NOTHING, one executemany per batch.

    What bulk_create(ignore_conflicts=True) does, at a fraction of the cost: bulk_create prepares
    every value of every field of every row in Python (two thirds of an import's time), and on
    SQLite its INSERT OR IGNORE would also swallow NOT NULL and CHECK violations. The columns are
    read from Lead's fields, so a field added to Lead is written with its default; only the fields
    in VARYING change per row, the rest are prepared once per batch (callable defaults other than
    timezone.now are called per row).
    """

    VARYING = ("line", "row", "fingerprint", "email", "domain", "company")

    def __init__(self, *, lead_import_id: int, webhook_id: int | None):
        self.fixed = {"lead_import": lead_import_id, "webhook": webhook_id, "state": Lead.State.QUEUED}
        self.fields = [field for field in Lead._meta.concrete_fields if not field.primary_key]
        names = [field.name for field in self.fields]
        self.slots = [(names.index(name), self.fields[names.index(name)]) for name in self.VARYING]
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in self.fields)
        placeholders = ", ".join(["%s"] * len(self.fields))
        self.sql = (
            f"INSERT INTO {quote(Lead._meta.db_table)} ({columns}) VALUES ({placeholders}) "
            f"ON CONFLICT ({quote(Lead._meta.get_field('fingerprint').column)}) DO NOTHING"
        )

    def insert(self, leads: Iterable[dict[str, Any]]) -> None:
        now = timezone.now()
        template: list[Any] = []
        per_row: list[tuple[int, Any]] = []
        varying = set(self.VARYING)
        for i, field in enumerate(self.fields):
            if field.name in varying:
                value = None
            elif field.name in self.fixed:
                value = self.fixed[field.name]
            elif getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
                value = now
            elif field.has_default() and callable(field.default):
                if field.default is not timezone.now:
                    per_row.append((i, field))
                value = now if field.default is timezone.now else None
            else:
                value = field.get_default()
            template.append(field.get_db_prep_save(value, connection))
        params = []
        for lead in leads:
            values = template.copy()
            for i, field in self.slots:
                value = lead[field.name]
                # Strings and ints go to the driver as they are; the JSON row needs its adapter.
                if not isinstance(value, str | int):
                    value = field.get_db_prep_save(value, connection)
                values[i] = value
            for i, field in per_row:
                values[i] = field.get_db_prep_save(field.get_default(), connection)
            params.append(values)
        with connection.cursor() as cursor:
            cursor.executemany(self.sql, params)


def _first(fields: list[str], cols: Iterable[int]) -> str:
    for i in cols:
        value = fields[i].strip()
        if value:
            return value
    return ""


def _quote(value: str, limit: int = 80) -> str:
    return f"“{value[:limit]}…”" if len(value) > limit else f"“{value}”"
