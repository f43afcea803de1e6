"""Files kept in the database: a Django storage for uploads that every node must be able to read.

An upload is received by one node's web server, but its import job runs on whichever node's RQ
worker takes it, and the nodes share nothing but the database and Redis. So uploaded CSVs are not
written under MEDIA_ROOT: each file is one `StoredFile` row (name, size) and its bytes are
`StoredFileChunk` rows of CHUNK_SIZE bytes (the last may hold fewer), numbered from 0.

Memory stays bounded whatever the file size:
- `save` reads the content CHUNK_SIZE at a time and inserts WRITE_BATCH chunks per INSERT. The file
  row and all its chunks are written in one transaction, so no node ever sees half a file and a
  failed upload leaves nothing behind.
- `open` returns a read-only, seekable stream that fetches one chunk (one SELECT) at a time.

The models are imported inside the functions that use them: clayops.models imports this module to
give `LeadImport.file` its storage.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from django.apps import apps
from django.core.files import File
from django.core.files.storage import Storage
from django.db import IntegrityError, router, transaction
from django.utils.deconstruct import deconstructible

CHUNK_SIZE = 1024 * 1024  # bytes per StoredFileChunk
WRITE_BATCH = 2  # chunks per INSERT (PostgreSQL: the INSERT, hex-escaped, holds ~5x its chunks in memory)
READ_BUFFER = 64 * 1024  # the BufferedReader's buffer; the raw stream keeps the current chunk


def _models() -> tuple[Any, Any]:
    # Through the app registry, not an import: models.py imports this module for LeadImport.file.
    return apps.get_model("clayops", "StoredFile"), apps.get_model("clayops", "StoredFileChunk")


@deconstructible(path="clayops.blobstore.DatabaseStorage")
class DatabaseStorage(Storage):
    """A Storage whose files are rows: see the module docstring. Files have no URL."""

    def _save(self, name: str, content: Any) -> str:
        StoredFile, _ = _models()
        db = router.db_for_write(StoredFile)
        with transaction.atomic(using=db):
            row = self._create_row(name, db)
            size = self._write_chunks(row, content, db)
            StoredFile.objects.using(db).filter(pk=row.pk).update(size=size)
        return row.name

    def _create_row(self, name: str, db: str) -> Any:
        """Insert the file's row under `name`, or under another free name if an upload with the same
        name won the race since `save` chose it (the unique index decides)."""
        StoredFile, _ = _models()
        while True:
            try:
                with transaction.atomic(using=db):
                    return StoredFile.objects.using(db).create(name=name, chunk_size=CHUNK_SIZE)
            except IntegrityError:
                if not StoredFile.objects.using(db).filter(name=name).exists():
                    raise
                name = self.get_available_name(name)

    def _write_chunks(self, row: Any, content: Any, db: str) -> int:
        _, StoredFileChunk = _models()
        size = 0
        batch = []
        for seq, data in enumerate(_exact_chunks(content, CHUNK_SIZE)):
            batch.append(StoredFileChunk(file=row, seq=seq, data=data))
            size += len(data)
            if len(batch) >= WRITE_BATCH:
                StoredFileChunk.objects.using(db).bulk_create(batch)
                batch = []
        if batch:
            StoredFileChunk.objects.using(db).bulk_create(batch)
        return size

    def _open(self, name: str, mode: str = "rb") -> File:
        if set(mode) - set("rb"):
            raise ValueError(f"files in the database are read-only: cannot open {name!r} in mode {mode!r}")
        StoredFile, _ = _models()
        db = router.db_for_read(StoredFile)
        row = StoredFile.objects.using(db).filter(name=name).values("pk", "size", "chunk_size").first()
        if row is None:
            raise FileNotFoundError(f"no stored file named {name!r}")
        return StoredFileHandle(ChunkReader(row["pk"], row["size"], row["chunk_size"], using=db, name=name))

    def exists(self, name: str) -> bool:
        StoredFile, _ = _models()
        return StoredFile.objects.using(router.db_for_read(StoredFile)).filter(name=name).exists()

    def delete(self, name: str) -> None:
        """Delete the file's row and its chunks; a file that does not exist is no error."""
        StoredFile, StoredFileChunk = _models()
        db = router.db_for_write(StoredFile)
        with transaction.atomic(using=db):
            pk = StoredFile.objects.using(db).filter(name=name).values_list("pk", flat=True).first()
            if pk is None:
                return
            # Chunks first, by id only: the cascade would load whole chunks if a delete signal
            # listened to every model.
            StoredFileChunk.objects.using(db).filter(file_id=pk).only("pk").delete()
            StoredFile.objects.using(db).filter(pk=pk).delete()

    def size(self, name: str) -> int:
        StoredFile, _ = _models()
        sizes = StoredFile.objects.using(router.db_for_read(StoredFile)).filter(name=name)
        size = sizes.values_list("size", flat=True).first()
        if size is None:
            raise FileNotFoundError(f"no stored file named {name!r}")
        return size

    def url(self, name: str | None) -> str:
        """Stored files are not served: no URL (an empty one, so that the admin's file widget renders)."""
        return ""


def _exact_chunks(content: Any, size: int) -> Iterator[bytes]:
    """The content as pieces of exactly `size` bytes, the last one shorter (none for an empty file).

    `content.chunks()` may yield pieces of any length (an in-memory upload is one piece, a pipe reads
    short, a text file yields str), and a seek by offset needs every chunk but the last to be full.
    """
    pending = b""
    for piece in content.chunks(size):
        if isinstance(piece, str):
            piece = piece.encode("utf-8")
        pending = pending + piece if pending else bytes(piece)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


class ChunkReader(io.RawIOBase):
    """A stored file's bytes, read-only, fetching one chunk at a time (the current one is kept)."""

    def __init__(self, file_id: int, size: int, chunk_size: int, *, using: str, name: str = ""):
        super().__init__()
        self.file_id = file_id
        self.size = size
        self.chunk_size = chunk_size
        self.using = using
        self.name = name
        self._pos = 0
        self._seq = -1
        self._chunk = memoryview(b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence})")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()
        if self._pos >= self.size:
            return 0
        seq, offset = divmod(self._pos, self.chunk_size)
        if seq != self._seq:
            self._load(seq)
        if offset >= len(self._chunk):
            raise OSError(f"stored file {self.name!r}: chunk {seq} is shorter than its file says")
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._chunk) - offset)
        view[:n] = self._chunk[offset : offset + n]
        self._pos += n
        return n

    def _load(self, seq: int) -> None:
        _, StoredFileChunk = _models()
        self._chunk = memoryview(b"")  # let the previous chunk go before the next one arrives
        rows = StoredFileChunk.objects.using(self.using).filter(file_id=self.file_id, seq=seq)
        found = list(rows.values_list("data", flat=True)[:1])
        if not found:
            raise FileNotFoundError(f"stored file {self.name!r} lost its chunk {seq} (deleted while read?)")
        self._chunk, self._seq = memoryview(found[0]), seq

    def close(self) -> None:
        self._chunk = memoryview(b"")
        self._seq = -1
        super().close()


class StoredFileHandle(File):
    """The File `DatabaseStorage.open` returns: buffered reads of a ChunkReader, its size known without
    reading it; once closed it can be opened again (from the start), as a file on disk can."""

    def __init__(self, reader: ChunkReader):
        super().__init__(io.BufferedReader(reader, buffer_size=READ_BUFFER), name=reader.name)
        self.reader = reader
        self.size = reader.size

    def open(self, mode: str | None = None, *args: Any, **kwargs: Any) -> StoredFileHandle:
        if not self.closed:
            self.seek(0)
            return self
        old = self.reader
        self.reader = ChunkReader(old.file_id, old.size, old.chunk_size, using=old.using, name=old.name)
        self.file = io.BufferedReader(self.reader, buffer_size=READ_BUFFER)
        return self
