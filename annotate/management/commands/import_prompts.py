"""Import prompts from a JSONL or CSV file: ``manage.py import_prompts --project SLUG --file PATH``."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.commands import project_get
from annotate.imports import ImportFailed, import_prompts


class Command(BaseCommand):
    help = 'Import prompts: JSONL ({"prompt": ...} or {"messages": [...]}, optional "tags") or CSV (prompt[,tags]).'

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--file", required=True, help="a .jsonl or .csv file")
        parser.add_argument("--source", default="", help="where the prompts came from (default: the file name)")

    def handle(self, *args, project: str, file: str, source: str, **options) -> None:
        project_row = project_get(project)
        try:
            with open(file, "rb") as stream:
                result = import_prompts(project=project_row, stream=stream, filename=file, source=source)
        except (ImportFailed, OSError) as error:
            raise CommandError(f"{file}: {error}") from None
        self.stdout.write(f"{result.created} prompts created, {result.skipped} duplicates skipped")
