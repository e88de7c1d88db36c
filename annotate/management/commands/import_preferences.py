"""Import judged pairs in TRL's format: ``manage.py import_preferences --project SLUG --file PATH``."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.commands import project_get
from annotate.imports import ImportFailed, import_preferences


class Command(BaseCommand):
    help = (
        'Import preference pairs from JSONL in TRL\'s format ({"prompt", "chosen", "rejected"[, "margin"]}, '
        "strings or conversational) as closed comparisons with imported votes."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--file", required=True, help="a .jsonl file")

    def handle(self, *args, project: str, file: str, **options) -> None:
        project_row = project_get(project)
        try:
            with open(file, "rb") as stream:
                result = import_preferences(project=project_row, stream=stream, filename=file)
        except (ImportFailed, OSError) as error:
            raise CommandError(f"{file}: {error}") from None
        self.stdout.write(
            f"{result.created} preferences imported ({result.comparisons} new comparisons), "
            f"{result.skipped} duplicates skipped"
        )
