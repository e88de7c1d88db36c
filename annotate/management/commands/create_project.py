"""Create a project without the Django admin: ``manage.py create_project --slug demo2 --name "Demo 2" --manager alice``."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate import people
from annotate.services import InvalidInput


class Command(BaseCommand):
    help = "Create a project, optionally with its first manager (an existing user; see add_member --create-user)."

    def add_arguments(self, parser):
        defaults = people.ProjectSettings()
        parser.add_argument("--slug", required=True, help="letters, digits, hyphens, underscores; in every URL")
        parser.add_argument("--name", required=True)
        parser.add_argument("--manager", help="username or email of the project's first manager")
        parser.add_argument("--guidelines-file", help="a Markdown file shown to annotators")
        parser.add_argument("--overlap", type=int, default=defaults.votes_per_comparison,
                            help="how many people vote on each comparison (votes_per_comparison)")
        parser.add_argument("--retrain-threshold", type=int, default=defaults.retrain_threshold,
                            help="new votes that trigger a reward-model retrain (0: never)")
        parser.add_argument("--lease-seconds", type=int, default=defaults.lease_seconds,
                            help="how long a comparison stays reserved for the person shown it")

    def handle(self, *args, slug: str, name: str, manager: str | None, guidelines_file: str | None,
               overlap: int, retrain_threshold: int, lease_seconds: int, **options):
        try:
            guidelines = Path(guidelines_file).read_text(encoding="utf-8") if guidelines_file else ""
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"cannot read the guidelines file: {error}") from None
        settings = people.ProjectSettings(votes_per_comparison=overlap, retrain_threshold=retrain_threshold,
                                          lease_seconds=lease_seconds)
        try:
            user = people.user_find(manager) if manager else None
            project = people.project_create(slug=slug, name=name, manager=user, guidelines=guidelines,
                                            settings=settings)
        except InvalidInput as error:
            raise CommandError(str(error)) from None
        who = f" with {user.username} as manager" if user else " (no manager yet: add one with add_member)"
        self.stdout.write(f"created project {project.slug} ({project.name}){who}")
