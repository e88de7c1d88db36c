"""Import completions and pair them into comparisons: ``manage.py import_completions --project SLUG --file PATH``."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.commands import project_get
from annotate.imports import ImportFailed, import_completions


class Command(BaseCommand):
    help = (
        'Import completions from JSONL ({"prompt", "checkpoint", "text"[, "sampling", "seed"]}) '
        "and pair different checkpoints' completions of a prompt into comparisons."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--file", required=True, help="a .jsonl file")

    def handle(self, *args, project: str, file: str, **options) -> None:
        project_row = project_get(project)
        try:
            with open(file, "rb") as stream:
                result = import_completions(project=project_row, stream=stream, filename=file)
        except (ImportFailed, OSError) as error:
            raise CommandError(f"{file}: {error}") from None
        self.stdout.write(
            f"{result.created} completions created, {result.skipped} duplicates skipped, "
            f"{result.comparisons} comparisons built"
        )
