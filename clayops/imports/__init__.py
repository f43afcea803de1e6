"""CSV lead imports: `create_import` stores an upload and enqueues the job, `run_import` is the job body.

Modules: `normalize` (emails, domains, fingerprints, column names), `reader` (bytes to numbered
lines to CSV records), `upload` (accepting a file), `run` (the job: claim, rows, batches, leads),
`manage` (operators' cancel and group DLQ retry / discard) and `report` (reads for the report page).

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
    first run did. Each duplicate row is recorded (ImportDuplicate: line, normalised email and
    domain, and the lead that holds the fingerprint, from whichever import), in the batch's
    transaction, at most MAX_STORED_DUPLICATES per import (all are counted).
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
    A re-claim also deletes the duplicate rows recorded, which the new run records again.
Cancel
    An operator may cancel a pending or running import (`manage.cancel_import`): a conditional UPDATE
    to `cancelled`, which the job's fence at the start of its next batch fails, so it stops there and
    rolls that batch back. The import's leads not yet taken by Clay nor held by a job are discarded;
    the rule is in `manage`'s docstring.
"""

from __future__ import annotations

from .normalize import COLUMN_ALIASES, NOT_COMPANY_DOMAINS, lead_fingerprint, normalize_domain, split_email
from .run import (
    BATCH_ROWS,
    MAX_STORED_DUPLICATES,
    MAX_STORED_ERRORS,
    RAW_MAX_CHARS,
    STALE_SECONDS,
    requeue_stale_imports,
    run_import,
)
from .upload import ImportRefused, create_import, default_webhook

__all__ = [
    "BATCH_ROWS",
    "COLUMN_ALIASES",
    "MAX_STORED_DUPLICATES",
    "MAX_STORED_ERRORS",
    "NOT_COMPANY_DOMAINS",
    "RAW_MAX_CHARS",
    "STALE_SECONDS",
    "ImportRefused",
    "create_import",
    "default_webhook",
    "lead_fingerprint",
    "normalize_domain",
    "requeue_stale_imports",
    "run_import",
    "split_email",
]
