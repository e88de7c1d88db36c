"""Load the demo project: prompts and SmolLM2 completions from data/demo, a manager and an annotator."""
from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from annotate import imports, services
from annotate.models import Checkpoint, Membership, Project

DEFAULT_PASSWORD = "flywheel-demo"
INCUMBENT = "smollm2-t0.3"
GUIDELINES = """\
# How to compare

You see a prompt and two answers, **A** and **B**, written by small language models.
Pick the answer a thoughtful person would rather receive.

1. **Correct first.** A wrong answer loses to a right one, however well written.
2. **Helpful next.** Does it actually answer what was asked, at a sensible length?
3. **Clear and safe.** Plain, well organised, and no harmful advice.

Choose **Tie** when they are equally good, **Both bad** when neither is acceptable.
Use *strength* to say how much better the winner is. Keys: `1` A, `2` B, `3` tie, `4` both bad,
`5`–`7` strength, `S` skip.
"""


class Command(BaseCommand):
    help = "Create (or refresh) the demo project with its prompts, completions and two users."

    def add_arguments(self, parser):
        parser.add_argument("--data", default=str(Path(settings.BASE_DIR) / "data" / "demo"))

    def handle(self, *args, data: str, **options):
        folder = Path(data)
        password = os.environ.get("DEMO_PASSWORD", DEFAULT_PASSWORD)
        with transaction.atomic():
            project, _ = Project.objects.get_or_create(
                slug="demo",
                defaults={"name": "Demo: SmolLM2 answers", "guidelines": GUIDELINES, "votes_per_comparison": 2},
            )
            services.user_with_role(
                project=project, username="manager", password=password, role=Membership.Role.MANAGER
            )
            services.user_with_role(
                project=project, username="annotator", password=password, role=Membership.Role.ANNOTATOR
            )
        with open(folder / "prompts.jsonl", "rb") as stream:
            prompts = imports.import_prompts(project=project, stream=stream, filename="prompts.jsonl", source="demo")
        with open(folder / "completions.jsonl", "rb") as stream:
            completions = imports.import_completions(project=project, stream=stream, filename="completions.jsonl")
        # The low-temperature sampler is the policy the loop improves: give it weights and make it the incumbent.
        Checkpoint.objects.filter(project=project, name=INCUMBENT).update(
            uri="smollm2", state=Checkpoint.State.INCUMBENT, meta={"base": "SmolLM2-135M-Instruct", "temperature": 0.3}
        )
        Checkpoint.objects.filter(project=project, name="smollm2-t1.0").update(
            uri="smollm2", meta={"base": "SmolLM2-135M-Instruct", "temperature": 1.0}
        )
        self.stdout.write(
            f"Demo project ready: {prompts.created} new prompts, {completions.created} new completions, "
            f"{completions.comparisons} new comparisons."
        )
        self.stdout.write(f"Log in as manager / {password} or annotator / {password}")
        if "DEMO_PASSWORD" not in os.environ:
            self.stdout.write("(set DEMO_PASSWORD to choose another password)")
