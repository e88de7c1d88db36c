"""python manage.py push_to_hub --project SLUG (--checkpoint NAME | --reward-model VERSION | --snapshot ID)
--repo OWNER/NAME [--private] [--token TOKEN] [--dry-run]

Uploads one artifact to the Hugging Face Hub with its card (see ``training.hub``). The token
defaults to HF_TOKEN or the login saved by ``hf auth login``; prefer those to --token, which
other users of the machine can read in the process list.
"""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from annotate.commands import project_get
from training.hub import HubError, hub_push


class Command(BaseCommand):
    help = "Upload a checkpoint, a reward model or a preference snapshot to a Hugging Face Hub repo, with its card."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--checkpoint", metavar="NAME", help="A checkpoint's name (a model repo).")
        what.add_argument("--reward-model", metavar="VERSION", help="A reward model's version (a model repo).")
        what.add_argument("--snapshot", metavar="ID", help="A snapshot's id (a dataset repo).")
        parser.add_argument("--repo", required=True, metavar="OWNER/NAME", help="The Hub repo; created if missing.")
        parser.add_argument("--private", action="store_true", help="Create the repo private.")
        parser.add_argument("--token", help="A Hub token with write access (default: HF_TOKEN or the saved login).")
        parser.add_argument("--dry-run", action="store_true", help="List what would be uploaded; send nothing.")

    def handle(self, *args, project, checkpoint, reward_model, snapshot, repo, private, token, dry_run, **options):
        target = project_get(project)
        kind, ident = next((k, v) for k, v in (("checkpoint", checkpoint), ("reward_model", reward_model),
                                               ("snapshot", snapshot)) if v is not None)
        try:
            staged, files, url = hub_push(project=target, kind=kind, ident=ident, repo_id=repo, private=private,
                                          token=token, dry_run=dry_run)
        except HubError as error:
            raise CommandError(str(error)) from None
        listing = "\n".join(f"  {name}" for name in files)
        if dry_run:
            self.stdout.write(f"Would upload {staged.description} to the {staged.repo_type} repo {repo}:\n{listing}")
        else:
            self.stdout.write(f"Uploaded {staged.description} to the {staged.repo_type} repo {repo}: {url}")
