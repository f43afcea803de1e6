"""Spreadsheet formula injection (issue 10): formula-like cells are flagged in the import summary,
kept as typed for Clay, and neutralised (a leading ') in every CSV clayops lets people download."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from clayops.imports.normalize import is_formula_like, neutralise
from tests.test_imports import run

CSV = (
    "email,company,note\n"
    'ann@acme.com,"=HYPERLINK(""http://x.test"",""click"")",hi\n'
    "bob@beta.io,Beta,@SUM(A1:A9)\n"
    "cid@gamma.io,Gamma,-5\n"  # a plain negative number: not a formula
    "=cmd|' /C calc'!A0,Evil,\n"  # invalid email that is also a formula
    "dan@delta.io,Delta,+1 555 0100\n"
)


@pytest.mark.parametrize(
    ("value", "formula"),
    [
        ("=1+1", True),
        ("+A1", True),
        ("-A1", True),
        ("@SUM(A1)", True),
        ("\tX", True),
        ("\r=1", True),
        ("-5", False),
        ("+1.5", False),
        ("1=1", False),
        ("", False),
        ("plain", False),
    ],
)
def test_formula_like_cells_are_recognised(value, formula):
    assert is_formula_like(value) is formula
    assert neutralise(value) == ("'" + value if formula else value)


@pytest.fixture
def imported(db, webhook):
    return run(CSV.encode(), webhook=webhook)


def test_the_import_summary_flags_rows_with_formula_like_cells(client, operator, imported):
    # Flagged: the HYPERLINK row, the @SUM row, "+1 555 0100" (a spreadsheet would compute it) and
    # the invalid =cmd row; not the plain -5.
    assert imported.formula_rows == 4 and imported.valid_rows == 4 and imported.invalid_rows == 1
    client.force_login(operator)
    page = client.get(reverse("dashboard:import_detail", args=[imported.pk])).content.decode()
    assert "4 rows have a cell starting with =, +, - or @" in page
    # Kept as typed: Clay gets what the file said.
    lead = imported.leads.get(email="ann@acme.com")
    assert lead.row["company"] == '=HYPERLINK("http://x.test","click")'


def test_the_invalid_rows_download_is_complete_and_neutralised(client, viewer, imported):
    client.force_login(viewer)
    response = client.get(reverse("dashboard:import_errors_csv", args=[imported.pk]))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == ["line", "reason", "row_as_read"]
    assert len(rows) == 2 and rows[1][0] == "5"
    assert rows[1][2].startswith("'=cmd|")  # opens as text, never as a formula
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)


def test_the_download_of_an_unknown_import_is_404(client, viewer):
    client.force_login(viewer)
    assert client.get(reverse("dashboard:import_errors_csv", args=[999999])).status_code == 404
