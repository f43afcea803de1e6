"""The import job: claim the import, read its rows, write leads batch by batch, enqueue them.

Claims and re-runs are described in the package docstring (clayops.imports).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import django_rq
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from ..delivery import hand_over
from ..enqueue import alert_check, enqueue_import, import_job_id
from ..models import ImportDuplicate, ImportRowError, Lead, LeadImport
from .normalize import (
    ALIAS_TO_FIELD,
    COLUMN_ALIASES,
    NOT_COMPANY_DOMAINS,
    first_value,
    header_key,
    is_formula_like,
    lead_fingerprint,
    normalize_domain,
    quoted,
    split_email,
)
from .reader import BAD_ENCODING, Line, Source, read_records

log = logging.getLogger("clayops.imports")

# Rows per transaction; after each the counts move and the new leads are enqueued.
BATCH_ROWS = 1000
MAX_STORED_ERRORS = 10_000
# Duplicate rows recorded per import (ImportDuplicate, with the lead each one duplicates); all are
# counted in duplicate_rows.
MAX_STORED_DUPLICATES = 100_000
RAW_MAX_CHARS = 500
# Bytes kept free under the payload limit for the keys clayops adds when sending (clayops_lead_id).
PAYLOAD_HEADROOM = 256
# A running import whose heartbeat is older than this is taken to be abandoned by a dead worker.
STALE_SECONDS = 300


class _ClaimLost(Exception):
    """The fence failed: another worker re-claimed this import (our heartbeat was thought stale) or an
    operator cancelled it (clayops.imports.manage.cancel_import). Stop quietly; the batch in hand is
    rolled back."""


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
        job = queue.fetch_job(import_job_id(pk))
        if job is not None and job.get_status(refresh=False) in waiting:
            continue
        enqueue_import(pk)
        requeued += 1
    return requeued


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
                formula_rows=0,
                error="",
            )
        )
        if claimed:
            ImportRowError.objects.filter(lead_import_id=import_id).delete()
            ImportDuplicate.objects.filter(lead_import_id=import_id).delete()
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
        state = LeadImport.objects.filter(pk=import_id).values_list("state", flat=True).first()
        if state == LeadImport.State.CANCELLED:
            log.info("import %s: cancelled by an operator; this run stops", import_id)
        else:
            log.warning("import %s: another worker re-claimed it; this run stops", import_id)
    except Exception as exc:
        run.fail(f"Import stopped by an unexpected error: {type(exc).__name__}: {exc}")
        raise
    imp.refresh_from_db()
    return imp


class _ImportRun:
    def __init__(self, imp: LeadImport, token):
        self.imp = imp
        self.token = token
        self.webhook_id = imp.webhook_id
        self.payload_limit = settings.CLAYOPS_MAX_PAYLOAD_BYTES
        self.max_rows = settings.CLAYOPS_IMPORT_MAX_ROWS
        self.batch_rows = getattr(settings, "CLAYOPS_IMPORT_BATCH_ROWS", BATCH_ROWS)
        self.total = self.valid = self.invalid = self.duplicate = 0
        self.formula = 0  # rows with a formula-like cell (flagged in the summary)
        self.stored_errors = 0
        self.stored_duplicates = 0
        self.batch: dict[str, dict[str, Any]] = {}  # fingerprint → the new lead's varying fields
        # Rows of this batch repeating a fingerprint seen earlier in the same batch:
        # (line, fingerprint, email, domain); their original is resolved when the batch is written.
        self.batch_repeats: list[tuple[int, str, str, str]] = []
        self.writer = _LeadWriter(lead_import_id=imp.pk, webhook_id=imp.webhook_id)
        self.errors: list[ImportRowError] = []
        self.unflushed = 0
        self.source: Source | None = None

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
                self.source = Source(fh, max_line_bytes=2 * self.payload_limit)  # type: ignore[arg-type]
                problem = self.source.open()
                if problem:
                    self.finish(LeadImport.State.FAILED, problem)
                    return
                self.read_rows()
        finally:
            csv.field_size_limit(old_limit)

    def read_rows(self) -> None:
        source = self.source
        assert source is not None  # run() opened it
        records = read_records(source.lines(), source.delimiter, csv.field_size_limit())
        header = None
        skip_hint = source.sep_hint
        for fields, lines, problem in records:
            if problem is None:  # a header that is not UTF-8 is read with replacement characters
                problem = next((ln[2] for ln in lines if ln[2] and not ln[2].startswith(BAD_ENCODING)), None)
            if problem is None and not "".join(fields or ()).strip():
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
                    if not "".join(fields or ()).strip():
                        continue
            if self.total >= self.max_rows:
                limit_line = lines[0][0]
                break
            self.total += 1
            self.unflushed += 1
            if problem is not None or fields is None:
                self.row_error(lines, problem or "unreadable row")
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
            field = ALIAS_TO_FIELD.get(header_key(raw))
            if field:
                cols[field].append(i)
        self.email_cols, self.domain_cols = cols["email"], cols["domain"]
        self.company_cols = cols["company"]
        self.first_cols, self.last_cols = cols["first_name"], cols["last_name"]
        if not self.email_cols and not self.domain_cols:
            delimiter = self.source.delimiter if self.source else ","
            shown = ", ".join(f"“{name}”" for name in names[:20]) + (" …" if len(names) > 20 else "")
            self.finish(
                LeadImport.State.FAILED,
                f"No email or domain column found (columns: {shown}; delimiter “{delimiter}”). "
                f"Name a column {' / '.join(COLUMN_ALIASES['email'][:4])} "
                f"or {' / '.join(COLUMN_ALIASES['domain'][:5])}.",
            )
            return False
        return True

    # Rows

    def add_row(self, fields: list[str], lines: list[Line]) -> None:
        if any(is_formula_like(value) for value in fields):
            self.formula += 1
        row = self._row_dict(fields)
        raw_email = first_value(fields, self.email_cols)
        raw_domain = first_value(fields, self.domain_cols)
        email, email_domain = split_email(raw_email) if raw_email else ("", "")
        domain = normalize_domain(raw_domain) if raw_domain else ""
        if domain in NOT_COMPANY_DOMAINS:
            domain = ""
        if not domain and email_domain not in NOT_COMPANY_DOMAINS:
            domain = email_domain
        if not email and not domain:
            if raw_email:
                problem = f"invalid email {quoted(raw_email)}"
                if raw_domain:
                    problem += f" and no company domain in {quoted(raw_domain)}"
            elif raw_domain:
                problem = f"invalid domain {quoted(raw_domain)}"
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

        company = first_value(fields, self.company_cols)
        fingerprint = lead_fingerprint(
            email=email,
            domain=domain,
            first_name=first_value(fields, self.first_cols),
            last_name=first_value(fields, self.last_cols),
            company=company,
        )
        if fingerprint in self.batch:
            self.duplicate += 1
            self.batch_repeats.append((lines[0][0], fingerprint, email, domain))
            return
        self.batch[fingerprint] = {
            "line": lines[0][0],
            "row": row,
            "fingerprint": fingerprint,
            "email": email,
            "domain": domain,
            "company": company[:255],
        }

    def _row_dict(self, fields: list[str]) -> dict[str, Any]:
        """The payload under the original column names; `fields` is padded or cut to the header."""
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
        return row

    def row_error(self, lines: list[Line], problem: str) -> None:
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
        duplicates: list[ImportDuplicate] = []
        with transaction.atomic():
            # The check between batches: a cancelled (or re-claimed) import fails this conditional
            # UPDATE, and the batch in hand is rolled back with the exception.
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
                holder_of: dict[str, int] = {}
                for pk, fingerprint, import_id, line, state in holders:
                    holder_of[fingerprint] = pk
                    if (
                        import_id == self.imp.pk
                        and line is not None
                        and line == self.batch[fingerprint]["line"]
                    ):
                        ours += 1
                        if state == Lead.State.QUEUED:
                            new_ids.append((line, pk))
                    else:  # the row's fingerprint was taken already: an older lead or an earlier line
                        new = self.batch[fingerprint]
                        self._duplicate(duplicates, new["line"], new["email"], new["domain"], pk)
                for line, fingerprint, email, domain in self.batch_repeats:
                    self._duplicate(duplicates, line, email, domain, holder_of.get(fingerprint))
                duplicates.sort(key=lambda dup: dup.line)
                if duplicates:
                    ImportDuplicate.objects.bulk_create(duplicates)
            if self.errors:
                ImportRowError.objects.bulk_create(self.errors)
            LeadImport.objects.filter(pk=self.imp.pk).update(
                **self._counts(valid=self.valid + ours, duplicate=self.duplicate + len(self.batch) - ours)
            )
        self.valid += ours
        self.duplicate += len(self.batch) - ours
        self.token = now
        self.batch = {}
        self.batch_repeats = []
        self.errors = []
        self.unflushed = 0
        if new_ids:
            # After the commit above; inside an outer transaction, at that commit. A paced workspace's
            # leads go straight to its pump's lists, the others as submission jobs.
            hand_over((pk for _, pk in sorted(new_ids)), urgent=self.imp.urgent)  # in file order

    def _duplicate(
        self, into: list[ImportDuplicate], line: int, email: str, domain: str, original_id: int | None
    ) -> None:
        """Record one duplicate row with the lead it duplicates (past MAX_STORED_DUPLICATES: only counted)."""
        if self.stored_duplicates >= MAX_STORED_DUPLICATES:
            return
        self.stored_duplicates += 1
        into.append(
            ImportDuplicate(
                lead_import_id=self.imp.pk, line=line, email=email, domain=domain, original_id=original_id
            )
        )

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
            "formula_rows": self.formula,
            "bytes_read": self.source.bytes_read if self.source else 0,
        }

    def finish(self, state: str, error: str) -> None:
        now = timezone.now()
        if not self._fence(state=state, error=error, finished_at=now, heartbeat_at=now, **self._counts()):
            raise _ClaimLost
        self.token = now
        if state == LeadImport.State.FAILED:
            alert_check("imports")

    def fail(self, error: str) -> None:
        """Record an unexpected failure, if this run still holds the import (best effort).

        The counts stay those of the last committed batch: they describe what is in the database.
        """
        try:
            self._fence(state=LeadImport.State.FAILED, error=error[:2000], finished_at=timezone.now())
            alert_check("imports")
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
        self.fixed: dict[str, Any] = {
            "lead_import": lead_import_id,
            "webhook": webhook_id,
            "state": Lead.State.QUEUED,
        }
        self.fields = [field for field in Lead._meta.concrete_fields if not field.primary_key]
        names = [field.name for field in self.fields]
        self.slots = [(names.index(name), self.fields[names.index(name)]) for name in self.VARYING]
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column or field.name) for field in self.fields)
        placeholders = ", ".join(["%s"] * len(self.fields))
        self.sql = (
            f"INSERT INTO {quote(Lead._meta.db_table)} ({columns}) VALUES ({placeholders}) "
            f"ON CONFLICT ({quote('fingerprint')}) DO NOTHING"
        )

    def insert(self, leads: Iterable[dict[str, Any]]) -> None:
        now = timezone.now()
        template: list[Any] = []
        per_row: list[tuple[int, Any]] = []
        varying = set(self.VARYING)
        for i, field in enumerate(self.fields):
            value: Any
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
