"""Freeze an immutable dataset snapshot: ``manage.py freeze_snapshot --project SLUG``."""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from annotate.artifacts import is_local, local_path
from annotate.commands import project_get
from annotate.reliability import AGGREGATIONS
from annotate.services import InvalidInput
from annotate.snapshots import snapshot_freeze


class Command(BaseCommand):
    help = "Write the project's pairs export to an immutable snapshot file and record it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--project", required=True, help="project slug")
        parser.add_argument("--filters", default="", help='JSON object, e.g. {"sources": ["human"]}')
        parser.add_argument("--aggregation", choices=AGGREGATIONS,
                            help="majority or model (the reliability model's posterior); default: the project's")

    def handle(self, *args, project: str, filters: str, aggregation: str | None, **options) -> None:
        project_row = project_get(project)
        try:
            snapshot = snapshot_freeze(project=project_row, filters=json.loads(filters) if filters else None,
                                       aggregation=aggregation)
        except (InvalidInput, OSError, ValueError) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"snapshot {snapshot.pk}: {snapshot.count} pairs from {snapshot.votes} votes, "
            f"sha256 {snapshot.sha256}\n{local_path(snapshot.uri) if is_local(snapshot.uri) else snapshot.uri}"
        )
