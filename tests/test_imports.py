"""clayops.imports: CSV upload, streaming parse, per-row errors, de-duplication, enqueue after commit."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import django_rq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from clayops import imports
from clayops.imports import (
    ImportRefused,
    create_import,
    lead_fingerprint,
    normalize_domain,
    requeue_stale_imports,
    run_import,
    split_email,
)
from clayops.imports import reader as import_reader
from clayops.imports import run as import_run
from clayops.models import ImportRowError, Lead, LeadImport
from tests.factories import make_webhook


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def upload(content: bytes | str, name: str = "leads.csv", **kwargs) -> LeadImport:
    data = content.encode() if isinstance(content, str) else content
    return create_import(file=io.BytesIO(data), filename=name, **kwargs)


def run(content: bytes | str, **kwargs) -> LeadImport:
    return run_import(upload(content, **kwargs).pk)


def errors(imp: LeadImport) -> list[tuple[int, str]]:
    return list(imp.row_errors.order_by("line").values_list("line", "error"))


def leads(imp: LeadImport) -> dict[str, Lead]:
    return {lead.email or lead.domain: lead for lead in imp.leads.all()}


def submit_jobs() -> list[list[int]]:
    return [job.args[0] for job in django_rq.get_queue("submit").jobs]


def assert_counts_add_up(imp: LeadImport) -> None:
    assert imp.total_rows == imp.valid_rows + imp.invalid_rows + imp.duplicate_rows


# --- Normalisation ------------------------------------------------------------------------------


def test_it_normalises_domains():
    assert normalize_domain(" HTTPS://www.Acme.com:8443/about?x=1#top ") == "acme.com"
    assert normalize_domain("acme.co.uk/") == "acme.co.uk"
    assert normalize_domain("//sub.acme.io") == "sub.acme.io"
    assert normalize_domain("http://user:pw@acme.com") == "acme.com"
    assert normalize_domain("www.com") == "www.com"
    assert normalize_domain("münchen.de") == "xn--mnchen-3ya.de"
    assert normalize_domain("https://bücher.example/") == "xn--bcher-kva.example"
    assert normalize_domain("acme") == ""
    assert normalize_domain("10.0.0.1") == ""
    assert normalize_domain("not a domain.com") == ""
    assert normalize_domain("") == ""


def test_it_normalises_emails():
    assert split_email("  Jane.Doe@ACME.com ") == ("jane.doe@acme.com", "acme.com")
    assert split_email("mailto:bob@acme.com") == ("bob@acme.com", "acme.com")
    assert split_email("Bob Bee <Bob@Acme.com>") == ("bob@acme.com", "acme.com")
    assert split_email("ü@münchen.de") == ("ü@münchen.de", "xn--mnchen-3ya.de")
    for bad in (
        "jane",
        "jane@",
        "@acme.com",
        "jane@acme",
        "ja ne@acme.com",
        "a@b@c.com",
        "x" * 250 + "@a.com",
    ):
        assert split_email(bad) == ("", ""), bad


def test_it_fingerprints_by_email_else_by_domain_and_names():
    assert lead_fingerprint(email="jane@acme.com", domain="acme.com", first_name="X") == (
        hashlib.sha256(b"jane@acme.com").hexdigest()
    )
    expected = hashlib.sha256(b"domain:acme.com|jane|doe|acme inc").hexdigest()
    assert lead_fingerprint(
        email="", domain="acme.com", first_name=" Jane", last_name="DOE", company="Acme Inc"
    ) == (expected)


def test_it_maps_column_aliases_and_keeps_other_columns(webhook):
    imp = run(
        "Work Email,Company Website,Organization,Given Name,Surname,Job Title\n"
        "Jane@Acme.com ,https://www.acme.com/team,Acme Inc,Jane,Doe,CTO\n"
        ",beta.io,Beta,Bob,Bee,CEO\n"
    )
    assert imp.state == LeadImport.State.DONE, imp.error
    assert (imp.total_rows, imp.valid_rows, imp.invalid_rows, imp.duplicate_rows) == (2, 2, 0, 0)
    jane, bob = leads(imp)["jane@acme.com"], leads(imp)["beta.io"]
    assert jane.row == {
        "Work Email": "Jane@Acme.com ",
        "Company Website": "https://www.acme.com/team",
        "Organization": "Acme Inc",
        "Given Name": "Jane",
        "Surname": "Doe",
        "Job Title": "CTO",
        "email": "jane@acme.com",
        "domain": "acme.com",
    }
    assert (jane.domain, jane.company, jane.line, jane.state) == (
        "acme.com",
        "Acme Inc",
        2,
        Lead.State.QUEUED,
    )
    assert jane.webhook == webhook and jane.lead_import == imp
    assert jane.fingerprint == hashlib.sha256(b"jane@acme.com").hexdigest()
    assert (bob.email, bob.domain, bob.line) == ("", "beta.io", 3)
    assert bob.fingerprint == lead_fingerprint(
        email="", domain="beta.io", first_name="Bob", last_name="Bee", company="Beta"
    )
    assert imp.bytes_read == imp.size_bytes and imp.finished_at is not None


def test_it_writes_leads_as_the_orm_would(webhook):
    imp = run("email,company\na@acme.com,Acme\n")
    imported = Lead.objects.values().get()
    made = Lead.objects.create(
        lead_import=imp,
        webhook=webhook,
        line=3,
        row=imported["row"],
        fingerprint="x",
        email="a@acme.com",
        domain="acme.com",
        company="Acme",
        state=Lead.State.QUEUED,
    )
    by_orm = Lead.objects.values().get(pk=made.pk)
    varying = {"id", "line", "fingerprint", "created_at", "updated_at", "state_changed_at"}
    assert {k: v for k, v in imported.items() if k not in varying} == {
        k: v for k, v in by_orm.items() if k not in varying
    }
    assert imported["created_at"] and imported["updated_at"] and imported["state_changed_at"]
    assert Lead.objects.filter(enriched__isnull=True, served__isnull=True).count() == 2


def test_it_accepts_more_aliases_and_takes_the_first_non_empty_of_several_email_columns(db):
    imp = run("e_mail,email address,company_name,url\n,second@acme.com,Acme,\nfirst@beta.io,x@y.io,Beta,\n")
    assert set(leads(imp)) == {"second@acme.com", "first@beta.io"}


def test_it_takes_the_domain_from_the_email_but_not_a_free_mail_one(db):
    imp = run(
        "email,domain\njane@acme.com,\nbob@gmail.com,\ncarl@gmail.com,carl-co.com\ndan@x.io,linkedin.com/in/dan\n"
    )
    by_email = leads(imp)
    assert by_email["jane@acme.com"].domain == "acme.com"
    assert by_email["bob@gmail.com"].domain == ""
    assert by_email["carl@gmail.com"].domain == "carl-co.com"
    assert by_email["dan@x.io"].domain == "x.io"


def test_it_keeps_extra_values_and_fills_missing_ones(db):
    imp = run("email,company,title\na@acme.com,Acme\nb@beta.io,Beta,CEO,Inc,\nc@gamma.io,Gamma,CTO,,\n")
    by_email = leads(imp)
    assert by_email["a@acme.com"].row["title"] == ""
    assert by_email["b@beta.io"].row["_extra"] == ["Inc", ""]
    assert "_extra" not in by_email["c@gamma.io"].row
    assert imp.invalid_rows == 0


def test_it_names_blank_and_repeated_headers(db):
    imp = run("email,,note,note\na@acme.com,x,1,2\n")
    row = leads(imp)["a@acme.com"].row
    assert (row["column_2"], row["note"], row["note_2"]) == ("x", "1", "2")


# --- Duplicates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_rows", [1000, 2])
def test_it_counts_duplicates_within_the_file_and_against_existing_leads(settings, batch_rows, db):
    settings.CLAYOPS_IMPORT_BATCH_ROWS = batch_rows
    Lead.objects.create(
        row={}, fingerprint=lead_fingerprint(email="old@acme.com", domain=""), email="old@acme.com"
    )
    imp = run(
        "email,domain,first name\n"
        "a@acme.com,,\n"  # 2
        "old@acme.com,,\n"  # 3: in the database already
        "A@ACME.com ,,\n"  # 4: line 2 again
        ",beta.io,Bob\n"  # 5
        ",beta.io,bob\n"  # 6: line 5 again (names compare lower-cased)
        ",beta.io,Carl\n"  # 7
        "a@acme.com,,\n"  # 8
    )
    assert (imp.total_rows, imp.valid_rows, imp.invalid_rows, imp.duplicate_rows) == (7, 3, 0, 4)
    assert sorted(imp.leads.values_list("line", flat=True)) == [2, 5, 7]
    assert Lead.objects.count() == 4


# --- Row errors and line numbers ----------------------------------------------------------------


def test_it_reports_row_errors_with_the_line_the_row_starts_on(db):
    imp = run(
        "email,company,notes\n"  # 1
        'a@acme.com,Acme,"first line\n'  # 2
        'second line"\n'  # 3
        ",,\n"  # 4: blank, skipped
        "bad-email,Foo,x\n"  # 5
        '"b@beta.io","Beta ""B"" Ltd","one\n'  # 6
        "two\n"  # 7
        'three"\n'  # 8
        "\n"  # 9
        "not-an-email,,\n"  # 10
        "c@gamma.io,Gamma,z"  # 11, no newline at the end
    )
    assert errors(imp) == [(5, "invalid email “bad-email”"), (10, "invalid email “not-an-email”")]
    by_email = leads(imp)
    assert by_email["a@acme.com"].row["notes"] == "first line\nsecond line"
    assert (by_email["a@acme.com"].line, by_email["b@beta.io"].line, by_email["c@gamma.io"].line) == (
        2,
        6,
        11,
    )
    assert by_email["b@beta.io"].company == 'Beta "B" Ltd'
    assert imp.row_errors.get(line=5).raw == "bad-email,Foo,x"
    assert (imp.total_rows, imp.valid_rows, imp.invalid_rows) == (5, 3, 2)


def test_it_reports_rows_missing_both_email_and_domain_and_invalid_domains(db):
    imp = run("email,domain,first name\n,,Jane\n,not a domain,Bob\nbad,acme,Carl\nok@acme.com,,\n")
    assert errors(imp) == [
        (2, "missing both email and domain"),
        (3, "invalid domain “not a domain”"),
        (4, "invalid email “bad” and no company domain in “acme”"),
    ]
    assert imp.valid_rows == 1


def test_it_falls_back_to_the_domain_when_the_email_is_invalid(db):
    imp = run("email,website\nnot-an-email,acme.com\n")
    lead = imp.leads.get()
    assert (lead.email, lead.domain, lead.row["email"]) == ("", "acme.com", "")


def test_it_reports_a_line_that_is_not_utf8_and_imports_the_rest(db):
    imp = run(
        b"email,company\n"
        b"a@acme.com,Acme\n"
        b"b@beta.io,Caf\xe9 Beta\n"  # latin-1 in a UTF-8 file
        b'c@gamma.io,"Gamma\n'
        b'G\xfcnther"\n'  # a bad line inside a quoted field: the row starting on line 4 is bad
        b"d@delta.io,Caf\xc3\xa9 Delta\n"
    )
    assert [line for line, _ in errors(imp)] == [3, 4]
    assert errors(imp)[0][1].startswith("bad encoding: not valid UTF-8 (byte 0xe9 at column 14)")
    assert imp.row_errors.get(line=3).raw == "b@beta.io,Caf\ufffd Beta"
    assert set(leads(imp)) == {"a@acme.com", "d@delta.io"}
    assert leads(imp)["d@delta.io"].company == "Café Delta"


def test_it_reports_a_line_with_nul_bytes(db):
    imp = run(b"email,company\na@acme.com,Ac\x00me\nb@beta.io,Beta\n")
    assert errors(imp) == [(2, "bad encoding: the line holds NUL bytes")]
    assert imp.row_errors.get().raw == "a@acme.com,Acme"  # PostgreSQL refuses NUL in text
    assert set(leads(imp)) == {"b@beta.io"}


def test_it_reads_a_utf8_bom(db):
    imp = run("\ufeffEmail,Company\na@acme.com,Acme\n".encode())
    lead = imp.leads.get()
    assert set(lead.row) == {
        "Email",
        "Company",
        "email",
        "domain",
    }  # PostgreSQL's jsonb does not keep key order
    assert imp.bytes_read == imp.size_bytes


@pytest.mark.parametrize(
    "content",
    [
        "E-Mail;Company Name;Notiz\na@acme.de;Acme GmbH;a, b\n",
        "Email\tCompany\tNote\na@acme.de\tAcme GmbH\ta, b\n",
        "sep=;\nemail;company;note\na@acme.de;Acme GmbH;a, b\n",
        "email|company|note\r\na@acme.de|Acme GmbH|a, b\r\n",
        'email,company,note\ra@acme.de,Acme GmbH,"a, b"\r',  # old Excel for Mac: CR only
    ],
)
def test_it_sniffs_the_delimiter_and_line_endings(content, db):
    imp = run(content)
    assert imp.state == LeadImport.State.DONE, imp.error
    lead = imp.leads.get()
    assert lead.company == "Acme GmbH"
    assert lead.row[next(key for key in lead.row if key.lower().startswith("not"))] == "a, b"


def test_it_rejects_a_row_over_the_payload_limit(settings, monkeypatch, db):
    huge = "x" * 99_900  # fits csv's field limit, not Clay's payload limit once JSON-encoded with the rest
    imp = run(f"email,notes\na@acme.com,{huge}\nb@beta.io,short\nc@gamma.io,{'y' * 150_000}\n")
    assert errors(imp) == [
        (2, "row exceeds Clay's 100 KB payload limit (99,953 bytes as JSON)"),
        (4, "field too large (over 100,000 characters)"),
    ]
    assert len(imp.row_errors.get(line=2).raw) == imports.RAW_MAX_CHARS
    assert set(leads(imp)) == {"b@beta.io"}

    # A physical line longer than two payloads is skipped without being held in memory.
    settings.CLAYOPS_MAX_PAYLOAD_BYTES = 1000
    monkeypatch.setattr(import_reader, "CHUNK_BYTES", 4096)
    imp = run(f"email,notes\na@acme.com,{'é' * 400}\nb@beta.io,{'z' * 50_000}\r\nc@gamma.io,ok\n")
    assert errors(imp) == [
        (2, "row exceeds Clay's 1 KB payload limit (853 bytes as JSON)"),
        (3, "line too long (50,012 bytes)"),
    ]
    assert set(leads(imp)) == {"c@gamma.io"}
    assert imp.bytes_read == imp.size_bytes


def test_it_reads_the_rows_an_unterminated_quote_swallowed(settings, db):
    imp = run('email,company\na@acme.com,"Acme\nb@beta.io,Beta\nc@gamma.io,Gamma\n')
    assert errors(imp) == [
        (
            2,
            "broken quoting: the quoted field opened on this line is not closed (the file ends inside it; "
            "2 more lines read); those lines were read again as rows",
        )
    ]
    assert set(leads(imp)) == {"b@beta.io", "c@gamma.io"}
    # In a long file the quote stops at csv's field size limit instead of the end of the file.
    settings.CLAYOPS_MAX_PAYLOAD_BYTES = 2000
    body = "".join(f"u{i}@acme.com,Acme {i}\n" for i in range(300))
    imp = run(f'email,company\nx@acme.com,"broken\n{body}z@acme.com,"also broken')
    assert [line for line, _ in errors(imp)] == [2, 303]
    assert "(it grows past 2,000 characters; " in errors(imp)[0][1]
    assert errors(imp)[1][1] == "broken quoting: a quoted field is not closed before the end of the file"
    assert imp.valid_rows == 300 and imp.total_rows == 302


def test_it_stores_a_bounded_number_of_row_errors(settings, monkeypatch, db):
    monkeypatch.setattr(import_run, "MAX_STORED_ERRORS", 3)
    settings.CLAYOPS_IMPORT_BATCH_ROWS = 2
    imp = run("email\n" + "bad\n" * 7 + "ok@acme.com\n")
    assert imp.invalid_rows == 7 and imp.row_errors.count() == 3
    assert [line for line, _ in errors(imp)] == [2, 3, 4]
    assert imp.valid_rows == 1


# --- Whole-file failures and refusals -----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,phone\nJane,123\n", "No email or domain column found (columns: “name”, “phone”"),
        ("\n\r\n  \n", "The file is empty: there is no header row."),
        ('"email,domain\n', "Could not read the header row (line 1): broken quoting"),
        (b"\xff\xfee\x00m\x00", "The file is UTF-16"),
        (b"PK\x03\x04\x14\x00", "This is an Excel workbook"),
        ("email,company\n".encode("utf-16-le"), "The file holds binary data"),
    ],
)
def test_it_fails_a_file_it_cannot_read_with_a_clear_error(content, message, db):
    imp = run(content)
    assert imp.state == LeadImport.State.FAILED
    assert imp.error.startswith(message), imp.error
    assert imp.finished_at is not None and not imp.leads.exists()
    assert imp.file.storage.exists(imp.file.name)  # kept: nothing lost


def test_it_fails_a_header_row_longer_than_any_acceptable_row(settings, monkeypatch, db):
    settings.CLAYOPS_MAX_PAYLOAD_BYTES = 1000
    monkeypatch.setattr(import_reader, "CHUNK_BYTES", 1024)
    imp = run("email," + "x" * 5000 + "\na@acme.com,1\n")
    assert imp.state == LeadImport.State.FAILED
    assert imp.error == "Could not read the header row (line 1): line too long (5,007 bytes)"


def test_it_finishes_a_file_with_a_header_but_no_rows(db):
    imp = run("email,company\n")
    assert (imp.state, imp.total_rows, imp.error) == (
        LeadImport.State.DONE,
        0,
        "The file has a header row but no data rows.",
    )


def test_it_refuses_empty_oversized_and_non_csv_files_before_reading(settings, tmp_path, db):
    settings.CLAYOPS_IMPORT_MAX_BYTES = 100
    with pytest.raises(ImportRefused, match="is empty"):
        upload(b"")
    with pytest.raises(ImportRefused, match=r"is 101 bytes; files up to 100 bytes are accepted"):
        upload(b"x" * 101)
    with pytest.raises(ImportRefused, match="not a CSV file"):
        upload(b"email\na@acme.com\n", name="leads.xlsx")
    assert not LeadImport.objects.exists()
    assert not (tmp_path / "media").exists() or not any((tmp_path / "media").rglob("*.*"))


def test_it_stores_the_upload_and_enqueues_the_import_after_commit(
    workspace, operator, django_capture_on_commit_callbacks
):
    make_webhook(workspace=workspace, name="off", priority=1, is_active=False)
    make_webhook(workspace=workspace, name="full", priority=2, is_full=True)
    second = make_webhook(workspace=workspace, name="second", priority=20)
    first = make_webhook(workspace=workspace, name="first", priority=10)
    queue = django_rq.get_queue("default")
    with django_capture_on_commit_callbacks(execute=True):
        imp = create_import(
            file=SimpleUploadedFile("Q3 leads.CSV", b"email\na@acme.com\n"),
            filename="../../Q3 leads.CSV",
            by=operator,
        )
        assert queue.count == 0
    assert [(job.func_name, job.args) for job in queue.jobs] == [("clayops.jobs.import_leads", (imp.pk,))]
    imp.refresh_from_db()
    assert (imp.state, imp.filename, imp.size_bytes, imp.uploaded_by) == (
        "pending",
        "Q3 leads.CSV",
        17,
        operator,
    )
    assert imp.webhook == first
    assert imp.file.name.startswith("imports/") and imp.file.read() == b"email\na@acme.com\n"
    imp.file.close()
    explicit = create_import(file=io.BytesIO(b"email\n"), filename="b.txt", webhook=second)
    assert explicit.webhook == second


# --- Limits, re-runs, claims ---------------------------------------------------------------------


def test_it_stops_at_the_row_limit(settings, db):
    settings.CLAYOPS_IMPORT_MAX_ROWS = 3
    imp = run("email\n\na@acme.com\nbad\nb@beta.io\nc@gamma.io\nd@delta.io\n")
    assert imp.state == LeadImport.State.DONE
    assert (imp.total_rows, imp.valid_rows, imp.invalid_rows) == (3, 2, 1)
    assert imp.error == (
        "Row limit reached: only the first 3 rows were imported (CLAYOPS_IMPORT_MAX_ROWS); "
        "the file was not read from line 6 on."
    )
    assert set(leads(imp)) == {"a@acme.com", "b@beta.io"}


def test_it_changes_nothing_when_a_finished_import_runs_again(django_capture_on_commit_callbacks, db):
    with django_capture_on_commit_callbacks(execute=True):
        imp = run("email\na@acme.com\nbad\na@acme.com\n")
    before = (LeadImport.objects.filter(pk=imp.pk).values().get(), list(Lead.objects.values()), errors(imp))
    jobs = submit_jobs()
    with django_capture_on_commit_callbacks(execute=True):
        again = run_import(imp.pk)
    assert again.state == LeadImport.State.DONE
    assert (
        LeadImport.objects.filter(pk=imp.pk).values().get(),
        list(Lead.objects.values()),
        errors(imp),
    ) == before
    assert submit_jobs() == jobs


def test_it_leaves_an_import_another_worker_is_running(db):
    imp = upload("email\na@acme.com\n")
    LeadImport.objects.filter(pk=imp.pk).update(state="running", heartbeat_at=timezone.now())
    assert run_import(imp.pk).state == LeadImport.State.RUNNING
    assert not Lead.objects.exists()


def test_it_reclaims_an_import_whose_worker_died_and_redoes_it_idempotently(
    django_capture_on_commit_callbacks, db
):
    imp = upload("email\na@acme.com\nbad\nb@beta.io\nb@beta.io\n")
    # A previous run created line 2's lead (since sent) and line 4's, recorded an error, then died.
    sent = Lead.objects.create(
        lead_import=imp,
        line=2,
        row={},
        email="a@acme.com",
        state=Lead.State.ACCEPTED,
        fingerprint=lead_fingerprint(email="a@acme.com", domain=""),
    )
    queued = Lead.objects.create(
        lead_import=imp,
        line=4,
        row={},
        email="b@beta.io",
        state=Lead.State.QUEUED,
        fingerprint=lead_fingerprint(email="b@beta.io", domain=""),
    )
    ImportRowError.objects.create(lead_import=imp, line=3, error="invalid email “bad”")
    stale = timezone.now() - timedelta(seconds=imports.STALE_SECONDS + 1)
    LeadImport.objects.filter(pk=imp.pk).update(
        state="running", started_at=stale, heartbeat_at=stale, total_rows=9
    )
    with django_capture_on_commit_callbacks(execute=True):
        imp = run_import(imp.pk)
    assert imp.state == LeadImport.State.DONE
    assert (imp.total_rows, imp.valid_rows, imp.invalid_rows, imp.duplicate_rows) == (4, 2, 1, 1)
    assert errors(imp) == [(3, "invalid email “bad”")]
    assert set(imp.leads.values_list("pk", flat=True)) == {sent.pk, queued.pk}
    assert submit_jobs() == [
        [queued.pk]
    ]  # the queued one again (the job skips it if taken); not the sent one


def test_it_stops_when_another_worker_takes_the_import_over(settings, monkeypatch, db):
    settings.CLAYOPS_IMPORT_BATCH_ROWS = 1
    original = import_run._ImportRun.flush
    calls = []

    def flush_then_lose_the_claim(self):
        original(self)
        calls.append(1)
        if len(calls) == 1:  # another worker re-claims between our batches
            LeadImport.objects.filter(pk=self.imp.pk).update(
                heartbeat_at=timezone.now() + timedelta(seconds=1)
            )

    monkeypatch.setattr(import_run._ImportRun, "flush", flush_then_lose_the_claim)
    imp = run("email\na@acme.com\nb@beta.io\nc@gamma.io\n")
    assert imp.state == LeadImport.State.RUNNING  # left to the other worker
    assert list(Lead.objects.values_list("email", flat=True)) == ["a@acme.com"]


def test_it_records_an_unexpected_error_and_reraises_it(settings, monkeypatch, db):
    settings.CLAYOPS_IMPORT_BATCH_ROWS = 1
    original = imports.lead_fingerprint

    def fingerprint(**kwargs):
        if kwargs["email"] == "c@gamma.io":
            raise RuntimeError("disk on fire")
        return original(**kwargs)

    monkeypatch.setattr(import_run, "lead_fingerprint", fingerprint)
    imp = upload("email\na@acme.com\nb@beta.io\nc@gamma.io\nd@delta.io\n")
    with pytest.raises(RuntimeError):
        run_import(imp.pk)
    imp.refresh_from_db()
    assert imp.state == LeadImport.State.FAILED
    assert imp.error == "Import stopped by an unexpected error: RuntimeError: disk on fire"
    assert sorted(Lead.objects.values_list("email", flat=True)) == ["a@acme.com", "b@beta.io"]  # kept
    assert (imp.total_rows, imp.valid_rows) == (2, 2)  # what the committed batches hold


def test_it_fails_when_the_stored_file_is_gone(db):
    imp = upload("email\na@acme.com\n")
    imp.file.storage.delete(imp.file.name)
    imp = run_import(imp.pk)
    assert (imp.state, imp.error) == ("failed", "The uploaded file is missing from storage: upload it again.")


def test_it_requeues_imports_whose_job_was_lost(django_capture_on_commit_callbacks, db):
    queue = django_rq.get_queue("default")
    old = timezone.now() - timedelta(seconds=imports.STALE_SECONDS + 1)
    lost = upload("email\na@acme.com\n")  # its on-commit enqueue never ran
    LeadImport.objects.filter(pk=lost.pk).update(created_at=old)
    dead = upload("email\na@acme.com\n")
    LeadImport.objects.filter(pk=dead.pk).update(state="running", heartbeat_at=old)
    upload("email\na@acme.com\n")  # recent: its job may simply be waiting
    alive = upload("email\na@acme.com\n")
    LeadImport.objects.filter(pk=alive.pk).update(state="running", heartbeat_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue_stale_imports() == 2
    assert sorted(job.args[0] for job in queue.jobs) == sorted([lost.pk, dead.pk])
    assert requeue_stale_imports() == 0  # their jobs are waiting now
    assert run_import(dead.pk).state == LeadImport.State.DONE


# --- Enqueue ------------------------------------------------------------------------------------


def test_it_enqueues_only_new_leads_and_only_after_commit(
    settings, webhook, django_capture_on_commit_callbacks
):
    settings.CLAYOPS_BATCH_SIZE = 2
    settings.CLAYOPS_IMPORT_BATCH_ROWS = 3
    Lead.objects.create(
        row={}, fingerprint=lead_fingerprint(email="old@acme.com", domain=""), email="old@acme.com"
    )
    with django_capture_on_commit_callbacks() as callbacks:
        imp = run("email\nold@acme.com\na@acme.com\nb@acme.com\nbad\nc@acme.com\na@acme.com\n")
    assert submit_jobs() == []  # nothing before the transaction commits
    for callback in callbacks:
        callback()
    new = dict(imp.leads.values_list("email", "pk"))
    assert set(new) == {"a@acme.com", "b@acme.com", "c@acme.com"}
    # One enqueue_leads per import batch; each split into jobs of CLAYOPS_BATCH_SIZE.
    assert submit_jobs() == [[new["a@acme.com"], new["b@acme.com"]], [new["c@acme.com"]]]


@pytest.mark.django_db(transaction=True)
def test_it_enqueues_each_batch_once_it_is_committed(settings, webhook):
    settings.CLAYOPS_IMPORT_BATCH_ROWS = 2
    imp = run("email\n" + "".join(f"u{i}@acme.com\n" for i in range(5)))
    jobs = submit_jobs()
    assert sorted(pk for job in jobs for pk in job) == sorted(imp.leads.values_list("pk", flat=True))
    assert len(jobs) == 3  # batches of 2, 2 and 1 rows
    assert set(Lead.objects.filter(pk__in=jobs[0]).values_list("state", flat=True)) == {Lead.State.QUEUED}


def test_an_upload_while_redis_is_down_is_kept_and_enqueued_by_the_tick(
    db, monkeypatch, django_capture_on_commit_callbacks, settings
):
    """The enqueue after commit fails (Redis down): the upload still succeeds with its file kept,
    and the maintenance tick's requeue_stale_imports enqueues it once Redis answers."""
    import redis

    from clayops.imports import upload as upload_module

    def down(import_id):
        raise redis.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(upload_module, "enqueue_import", down)
    with django_capture_on_commit_callbacks(execute=True):
        imp = upload("email\nann@acme.com\n")
    imp.refresh_from_db()
    assert imp.state == LeadImport.State.PENDING and imp.file.storage.exists(imp.file.name)
    monkeypatch.undo()
    settings.CLAYOPS_IMPORT_STALE_SECONDS = 0
    from clayops.imports import requeue_stale_imports

    assert requeue_stale_imports() == 1
    assert run_import(imp.pk).valid_rows == 1


def test_a_paced_workspaces_import_goes_straight_to_its_pump_without_a_job(
    settings, webhook, django_capture_on_commit_callbacks
):
    # 25 imports queued one after the other must not wait behind each other's jobs: a paced
    # workspace's batch goes to its pump's lists at once, the pump due now (issue 15).
    from clayops import pacequeue

    settings.CLAYOPS_BATCH_SIZE = 2
    webhook.workspace.rate_limit = 10
    webhook.workspace.save()
    with django_capture_on_commit_callbacks() as callbacks:
        imp = run("email\na@acme.com\nb@acme.com\nc@acme.com\n")
    assert pacequeue.waiting(webhook.workspace_id) == 0  # nothing before the transaction commits
    for callback in callbacks:
        callback()
    assert submit_jobs() == []
    assert pacequeue.waiting(webhook.workspace_id) == 3
    assert pacequeue.take_due() == [webhook.workspace_id]
    popped = [pacequeue.pop(webhook.workspace_id)[1] for _ in range(2)]
    new = dict(imp.leads.values_list("email", "pk"))
    assert popped == [[new["a@acme.com"], new["b@acme.com"]], [new["c@acme.com"]]]  # file order, in batches


def test_a_paced_workspaces_leads_stay_queued_for_the_orphan_reaper_when_redis_refuses_them(
    settings, webhook, monkeypatch, django_capture_on_commit_callbacks
):
    from redis.exceptions import ConnectionError as RedisDown

    from clayops import delivery, pacequeue

    webhook.workspace.rate_limit = 10
    webhook.workspace.save()
    refused = []

    def refuse(*args, **kwargs):
        refused.append(args)
        raise RedisDown("down")

    monkeypatch.setattr(pacequeue, "push", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        imp = run("email\na@acme.com\n")
    assert refused and imp.leads.get().state == Lead.State.QUEUED
    monkeypatch.undo()
    settings.CLAYOPS_ORPHAN_SECONDS = 0
    with django_capture_on_commit_callbacks(execute=True):
        assert delivery.requeue_orphans(now=timezone.now() + timedelta(seconds=1)) == 1
    assert submit_jobs() == [[imp.leads.get().pk]]
