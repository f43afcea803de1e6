"""clayops.blobstore: uploads kept in the database, so that any node's worker reads what any node's web
server received; chunked both ways, so that a large file never sits in memory."""

from __future__ import annotations

import hashlib
import importlib
import io
import random
import subprocess
import sys
import tracemalloc

import pytest
from django.apps import apps
from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models.functions import Length

from clayops import blobstore
from clayops.blobstore import CHUNK_SIZE, DatabaseStorage
from clayops.imports import create_import, run_import
from clayops.imports import upload as import_upload
from clayops.models import LeadImport, StoredFile, StoredFileChunk
from tests.conftest import child_env

MiB = 1024 * 1024
storage = DatabaseStorage()


def chunk_sizes(name: str) -> list[int]:
    chunks = StoredFileChunk.objects.filter(file__name=name).order_by("seq")
    return list(chunks.annotate(n=Length("data")).values_list("n", flat=True))


def read_in_pieces(name: str, piece: int) -> bytes:
    out = bytearray()
    with storage.open(name) as fh:
        while data := fh.read(piece):
            out += data
    return bytes(out)


def no_files_under(root) -> bool:
    return not root.exists() or not any(path.is_file() for path in root.rglob("*"))


def csv_upload(rows: int = 3) -> bytes:
    return ("email,company\n" + "".join(f"u{i}@acme{i}.com,Acme {i}\n" for i in range(rows))).encode()


# --- Round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        2 * CHUNK_SIZE,
        2 * blobstore.WRITE_BATCH * CHUNK_SIZE + 1,
    ],
)
def test_it_round_trips_files_at_the_chunk_boundaries(size, db):
    data = random.Random(size).randbytes(size)
    name = storage.save("imports/edge.csv", ContentFile(data))
    full, rest = divmod(size, CHUNK_SIZE)
    assert chunk_sizes(name) == [CHUNK_SIZE] * full + ([rest] if rest else [])
    assert storage.exists(name) and storage.size(name) == size
    assert StoredFile.objects.get(name=name).size == size
    with storage.open(name) as fh:
        assert fh.size == size
        assert fh.read() == data
        assert fh.read() == b""  # at the end
    assert read_in_pieces(name, 7_777) == data  # short reads across chunk boundaries


def test_it_cuts_uploads_into_full_chunks_whatever_pieces_the_upload_yields(db):
    # An in-memory upload yields itself as one piece; a text file yields str.
    data = random.Random(1).randbytes(2 * CHUNK_SIZE + CHUNK_SIZE // 2)
    name = storage.save("imports/memory.csv", SimpleUploadedFile("memory.csv", data))
    assert chunk_sizes(name) == [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE // 2]
    assert read_in_pieces(name, MiB) == data

    class Dribble(File):
        def chunks(self, chunk_size=None):
            yield from (data[i : i + 100_003] for i in range(0, len(data), 100_003))

    name = storage.save("imports/dribble.csv", Dribble(io.BytesIO(data), name="dribble.csv"))
    assert chunk_sizes(name) == [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE // 2]
    assert read_in_pieces(name, 4096) == data
    name = storage.save("imports/text.csv", ContentFile("email\nzoë@acme.com\n"))
    assert read_in_pieces(name, 10) == "email\nzoë@acme.com\n".encode()


def test_it_seeks_and_reopens_like_a_file_on_disk(db):
    data = random.Random(2).randbytes(3 * CHUNK_SIZE + 10)
    name = storage.save("imports/seek.csv", ContentFile(data))
    with storage.open(name) as fh:
        fh.seek(2 * CHUNK_SIZE - 5)
        assert fh.read(10) == data[2 * CHUNK_SIZE - 5 : 2 * CHUNK_SIZE + 5]
        assert fh.tell() == 2 * CHUNK_SIZE + 5
        fh.seek(-3, io.SEEK_END)
        assert fh.read() == data[-3:]
        fh.seek(1)
        assert fh.read(2) == data[1:3]
    # A FieldFile closed after reading opens again (run_import opens what a test may have read).
    imp = LeadImport.objects.create(filename="seek.csv", file=name)
    assert imp.file.read(4) == data[:4]
    imp.file.close()
    with imp.file.open("rb") as fh:
        assert fh.read(4) == data[:4]


def test_it_refuses_to_open_a_file_for_writing(db):
    name = storage.save("imports/ro.csv", ContentFile(b"email\n"))
    for mode in ("wb", "ab", "r+b"):
        with pytest.raises(ValueError, match="read-only"):
            storage.open(name, mode)


# --- Names, deletion, missing files -------------------------------------------------------------


def test_it_gives_a_taken_name_another_one(db):
    first = storage.save("imports/leads.csv", ContentFile(b"one"))
    second = storage.save("imports/leads.csv", ContentFile(b"two"))
    assert first == "imports/leads.csv"
    assert second != first and second.startswith("imports/leads_") and second.endswith(".csv")
    assert (read_in_pieces(first, 10), read_in_pieces(second, 10)) == (b"one", b"two")


def test_it_takes_another_name_when_an_upload_with_the_same_name_won_the_race(monkeypatch, db):
    storage.save("imports/race.csv", ContentFile(b"winner"))
    exists = storage.exists
    calls = []

    def stale_exists(name):  # what save saw before the other upload committed
        calls.append(name)
        return False if len(calls) == 1 else exists(name)

    monkeypatch.setattr(storage, "exists", stale_exists)
    name = storage.save("imports/race.csv", ContentFile(b"loser"))
    assert name != "imports/race.csv" and name.startswith("imports/race_")
    assert (read_in_pieces("imports/race.csv", 10), read_in_pieces(name, 10)) == (b"winner", b"loser")


def test_it_deletes_a_file_with_its_chunks(db):
    keep = storage.save("imports/keep.csv", ContentFile(b"k" * (CHUNK_SIZE + 1)))
    name = storage.save("imports/gone.csv", ContentFile(b"x" * (2 * CHUNK_SIZE + 1)))
    storage.delete(name)
    storage.delete(name)  # already gone: no error
    assert not storage.exists(name)
    assert not StoredFileChunk.objects.filter(file__name=name).exists()
    assert chunk_sizes(keep) == [CHUNK_SIZE, 1]
    with pytest.raises(FileNotFoundError):
        storage.open(name)
    with pytest.raises(FileNotFoundError):
        storage.size(name)
    assert storage.url(keep) == ""


def test_it_reports_a_file_deleted_while_it_is_read(db):
    name = storage.save("imports/vanishing.csv", ContentFile(b"v" * (2 * CHUNK_SIZE)))
    with storage.open(name) as fh:
        assert fh.read(10) == b"v" * 10
        storage.delete(name)
        with pytest.raises(FileNotFoundError, match="lost its chunk 1"):
            fh.read()


def test_it_fails_the_import_when_its_stored_file_is_gone(db):
    imp = create_import(file=io.BytesIO(csv_upload()), filename="leads.csv")
    StoredFile.objects.filter(name=imp.file.name).delete()  # the rows, cascading to the chunks
    imp = run_import(imp.pk)
    assert (imp.state, imp.error) == ("failed", "The uploaded file is missing from storage: upload it again.")


def test_it_deletes_the_stored_file_when_the_upload_is_not_recorded(monkeypatch, db):
    def broken(**kwargs):
        raise RuntimeError("database said no")

    monkeypatch.setattr(import_upload.AuditEntry.objects, "create", broken)
    with pytest.raises(RuntimeError):
        create_import(file=io.BytesIO(csv_upload()), filename="leads.csv")
    assert not LeadImport.objects.exists()
    assert not StoredFile.objects.exists() and not StoredFileChunk.objects.exists()


def test_it_keeps_the_storage_out_of_the_migration_state(db):
    # makemigrations stays quiet only if the field's storage deconstructs to the same thing each time.
    assert DatabaseStorage().deconstruct() == ("clayops.blobstore.DatabaseStorage", (), {})
    assert isinstance(LeadImport._meta.get_field("file").storage, DatabaseStorage)


# --- Nodes --------------------------------------------------------------------------------------


def test_it_lets_a_node_read_the_upload_another_node_received(settings, tmp_path, webhook):
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"
    settings.MEDIA_ROOT = node_a
    on_a = create_import(file=io.BytesIO(csv_upload(3)), filename="from-a.csv")
    settings.MEDIA_ROOT = node_b
    assert run_import(on_a.pk).valid_rows == 3  # node B's worker
    on_b = create_import(file=io.BytesIO(csv_upload(5)), filename="from-b.csv")
    settings.MEDIA_ROOT = node_a
    imp = LeadImport.objects.get(pk=on_b.pk)
    assert imp.file.read() == csv_upload(5)  # node A reads it
    imp.file.close()
    assert no_files_under(node_a) and no_files_under(node_b)


@pytest.mark.django_db(transaction=True)
def test_it_runs_an_import_in_a_process_with_another_media_root(tmp_path, webhook):
    """Node B is another process, with its own MEDIA_ROOT, sharing only the database (and Redis)."""
    imp = create_import(file=io.BytesIO(csv_upload(4)), filename="shared.csv")
    node_b = tmp_path / "node-b-media"
    script = (
        "import django, json\n"
        "django.setup()\n"
        "from django.conf import settings\n"
        "from clayops.imports import run_import\n"
        f"imp = run_import({imp.pk})\n"
        "print(json.dumps([str(settings.MEDIA_ROOT), imp.state, imp.valid_rows, imp.error]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=settings.BASE_DIR,
        env=child_env(MEDIA_ROOT=str(node_b)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f'["{node_b}", "done", 4, ""]'
    assert no_files_under(node_b) and no_files_under(tmp_path / "media")


def test_the_migration_copies_unfinished_uploads_from_media_root(settings, tmp_path, db):
    settings.MEDIA_ROOT = tmp_path
    (tmp_path / "imports").mkdir()
    data = csv_upload(2) + b"x" * CHUNK_SIZE
    for name in ("pending.csv", "done.csv"):
        (tmp_path / "imports" / name).write_bytes(data)
    pending = LeadImport.objects.create(filename="pending.csv", file="imports/pending.csv")
    LeadImport.objects.create(filename="done.csv", file="imports/done.csv", state="done")
    LeadImport.objects.create(filename="lost.csv", file="imports/lost.csv")  # on another node's disk
    migration = importlib.import_module("clayops.migrations.0005_stored_uploads")
    migration.copy_unfinished_uploads(apps, None)
    migration.copy_unfinished_uploads(apps, None)  # again: nothing copied twice
    assert list(StoredFile.objects.values_list("name", "size")) == [("imports/pending.csv", len(data))]
    assert read_in_pieces(pending.file.name, MiB) == data


# --- Memory -------------------------------------------------------------------------------------


def test_it_saves_and_reads_a_30_mb_upload_in_bounded_memory(tmp_path, db):
    size = 30 * MiB + 12_345
    path = tmp_path / "big.csv"
    rng, digest = random.Random(30), hashlib.sha256()
    with path.open("wb") as fh:
        for start in range(0, size, MiB):
            piece = rng.randbytes(min(MiB, size - start))
            digest.update(piece)
            fh.write(piece)

    tracemalloc.start()
    try:
        with path.open("rb") as fh:
            imp = create_import(file=fh, filename="big.csv")
        _, save_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        imp = LeadImport.objects.get(pk=imp.pk)
        read_back = hashlib.sha256()
        with imp.file.open("rb") as fh:
            while piece := fh.read(256 * 1024):  # as clayops.imports.reader reads
                read_back.update(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert imp.size_bytes == size == storage.size(imp.file.name)
    assert read_back.hexdigest() == digest.hexdigest()
    assert len(chunk_sizes(imp.file.name)) == 31
    # The whole file would be 30 MiB. Saving holds one INSERT's chunks (2 MiB on SQLite; ~11 MiB on
    # PostgreSQL, which builds the INSERT with the bytes hex-escaped), reading one chunk.
    assert save_peak < 16 * MiB, save_peak
    assert read_peak < 4 * MiB, read_peak
    print(f"30 MiB round trip: peak {save_peak / MiB:.1f} MiB saving, {read_peak / MiB:.1f} MiB reading")
