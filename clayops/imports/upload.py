"""Accepting an upload: checks that need no row read, storage, and the import job enqueued after commit."""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import transaction

from ..enqueue import enqueue_import
from ..models import AuditEntry, LeadImport, Webhook

log = logging.getLogger("clayops.imports")

ALLOWED_EXTENSIONS = (".csv", ".txt")


class ImportRefused(ValidationError):
    """The upload was refused before any row was read; the message says why, for the operator."""


def default_webhook() -> Webhook | None:
    """The webhook new imports send to: the first usable one by priority."""
    usable = Webhook.objects.filter(is_active=True, is_full=False, broken_reason="")
    return usable.order_by("priority", "id").first()


def _human_bytes(n: int) -> str:
    if n < 1000:
        return f"{n:,} bytes"
    size, unit = next((n / 1000**i, u) for i, u in ((3, "GB"), (2, "MB"), (1, "KB")) if n >= 1000**i)
    return f"{size:,.1f}".removesuffix(".0") + f" {unit}"


def create_import(
    *, file: Any, filename: str, by: Any = None, webhook: Webhook | None = None, urgent: bool = False
) -> LeadImport:
    """Store an uploaded CSV in the database (clayops.blobstore: every node's worker can read it) and
    enqueue its import after commit.

    `file` is a Django UploadedFile or any binary file object. Raises ImportRefused for a name not
    ending in .csv/.txt, an empty file, or one over CLAYOPS_IMPORT_MAX_BYTES; nothing is stored then.
    The upload is written to the audit log with its uploader (`by`).
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
        urgent=bool(urgent),
    )
    imp.file.save(name, upload, save=False)  # streamed to storage in chunks
    committed = False
    try:
        with transaction.atomic():
            imp.save()
            AuditEntry.objects.create(
                user=by,
                action="import_upload",
                target=f"import:{imp.pk}",
                detail={"filename": imp.filename, "size_bytes": imp.size_bytes, "urgent": imp.urgent},
            )
            transaction.on_commit(partial(_enqueue_after_commit, imp.pk))
        committed = True
    except BaseException:
        if not committed:  # the import row never existed: its file goes too
            imp.file.delete(save=False)
        raise
    return imp


def _enqueue_after_commit(import_id: int) -> None:
    """The import is stored: with Redis down, its job is enqueued later by the maintenance tick
    (requeue_stale_imports), so the upload succeeds instead of failing after its commit."""
    try:
        enqueue_import(import_id)
    except Exception as exc:  # Redis down (or anything else): the row is committed, the tick recovers it
        log.warning("import %s: not enqueued (%s); the maintenance tick will enqueue it", import_id, exc)
