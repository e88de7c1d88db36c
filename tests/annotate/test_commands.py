"""The annotate management commands share one project lookup (annotate.commands.project_get)."""
from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from annotate.commands import project_get


@pytest.mark.parametrize(
    "name, options",
    [
        ("import_prompts", {"file": "prompts.jsonl"}),
        ("import_completions", {"file": "completions.jsonl"}),
        ("import_preferences", {"file": "prefs.jsonl"}),
        ("export_preferences", {"format": "trl", "out": "out.jsonl"}),
        ("freeze_snapshot", {}),
    ],
)
def test_commands_refuse_an_unknown_project_by_name(db, tmp_path, name, options):
    options = {key: str(tmp_path / value) if key in ("file", "out") else value for key, value in options.items()}
    with pytest.raises(CommandError, match="no project with slug 'nope'"):
        call_command(name, project="nope", **options)
    assert not any(tmp_path.iterdir())  # refused before reading or writing anything


def test_project_get_finds_the_project_by_slug(project):
    assert project_get("demo") == project
