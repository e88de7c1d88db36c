"""Export a project's preferences: ``manage.py export_preferences --project SLUG --format trl --out PATH``."""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotate.commands import project_get
from annotate.exports import EXPORT_FORMATS, export_vote_count, write_export
from annotate.reliability import AGGREGATIONS
from annotate.services import InvalidInput


class Command(BaseCommand):
    help = "Export preferences as JSONL, or Parquet when --out ends in .parquet (see docs/export-formats.md)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
        parser.add_argument("--out", required=True, help="output file; .parquet writes Parquet, else JSONL")
        parser.add_argument("--filters", default="", help='JSON object, e.g. {"sources": ["human"]}')
        parser.add_argument("--metadata", action="store_true",
                            help="add the comparison's reason, vote sources, annotator ids, checkpoints, "
                                 "sampling settings, seeds, times, time spent and rationales")
        parser.add_argument("--real-names", action="store_true",
                            help="write annotators' usernames instead of their keyed pseudonyms")
        parser.add_argument("--aggregation", default="majority", choices=AGGREGATIONS,
                            help="majority (default), or model: each side from the latest reliability fit")
        parser.add_argument("--confidence", action="store_true",
                            help="add the reliability model's confidence to every row (needs --aggregation model)")

    def handle(self, *args, project: str, out: str, filters: str, metadata: bool, real_names: bool,
               aggregation: str, confidence: bool, **options) -> None:
        project_row, fmt = project_get(project), options["format"]
        try:
            parsed = json.loads(filters) if filters else None
            total = export_vote_count(project=project_row, filters=parsed)
            with tqdm(total=total, unit="vote", desc=f"export {fmt}", file=self.stderr._out) as bar:
                rows = write_export(project=project_row, fmt=fmt, path=out, progress=bar.update, filters=parsed,
                                    metadata=metadata, real_names=real_names, aggregation=aggregation,
                                    confidence=confidence)
        except (InvalidInput, OSError, ValueError) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{rows} rows written to {out}")
