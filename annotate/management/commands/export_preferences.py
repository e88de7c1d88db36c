"""Export a project's preferences: ``manage.py export_preferences --project SLUG --format trl --out PATH``."""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.commands import project_get
from annotate.exports import FORMATS, export_vote_count, write_export
from annotate.services import InvalidInput


class Command(BaseCommand):
    help = "Export preferences as JSONL, or Parquet when --out ends in .parquet (see docs/export-formats.md)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--out", required=True, help="output file; .parquet writes Parquet, else JSONL")
        parser.add_argument("--filters", default="", help='JSON object, e.g. {"sources": ["human"]}')

    def handle(self, *args, project: str, out: str, filters: str, **options) -> None:
        project_row, fmt = project_get(project), options["format"]
        try:
            parsed = json.loads(filters) if filters else None
            total = export_vote_count(project=project_row, filters=parsed)
            with tqdm(total=total, unit="vote", desc=f"export {fmt}", file=self.stderr._out) as bar:
                rows = write_export(project=project_row, fmt=fmt, path=out, progress=bar.update, filters=parsed)
        except (InvalidInput, OSError, ValueError) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{rows} rows written to {out}")
