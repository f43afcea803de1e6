"""Import reports: the duplicate rows an import skipped (with the lead they duplicate), and cancelling."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("clayops", "0006_alerts"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="leadimport",
            name="cancelled_at",
            field=models.DateTimeField(
                blank=True, help_text="When an operator cancelled the import (clayops.imports.manage).", null=True
            ),
        ),
        migrations.AddField(
            model_name="leadimport",
            name="cancelled_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="leadimport",
            name="state",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("running", "Running"),
                    ("done", "Done"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                ],
                default="pending",
                max_length=10,
            ),
        ),
        migrations.CreateModel(
            name="ImportDuplicate",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("line", models.PositiveIntegerField(help_text="Line of the skipped row in the imported file.")),
                (
                    "email",
                    models.CharField(blank=True, help_text="The skipped row's normalised email.", max_length=254),
                ),
                (
                    "domain",
                    models.CharField(blank=True, help_text="The skipped row's normalised domain.", max_length=253),
                ),
                (
                    "lead_import",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="duplicates",
                        to="clayops.leadimport",
                    ),
                ),
                (
                    "original",
                    models.ForeignKey(
                        blank=True,
                        help_text="The lead holding the fingerprint: an earlier line of this file or an older lead.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="clayops.lead",
                    ),
                ),
            ],
            options={
                "ordering": ["lead_import", "line"],
                "indexes": [models.Index(fields=["lead_import", "line"], name="importdup_import_line")],
            },
        ),
    ]
