"""Imports: every format's happy path, all-or-nothing failures that name the line and field."""
from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import override_settings

from annotate import imports
from annotate.exports import export_rows
from annotate.imports import ImportFailed, ImportResult
from annotate.models import Checkpoint, Comparison, Completion, Prompt, Vote


def jsonl(*rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(row) + "\n" for row in rows).encode())


def counts() -> dict[str, int]:
    models = (Prompt, Checkpoint, Completion, Comparison, Vote)
    return {model.__name__: model.objects.count() for model in models} | {
        "users": get_user_model().objects.count()
    }


def test_prompts_import_from_jsonl_with_strings_messages_and_tags(project):
    stream = jsonl(
        {"prompt": "What is 2 + 2?"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
         "tags": ["easy"]},
        {"prompt": "Explain rain.", "source": "forum"},
    )
    result = imports.import_prompts(project=project, stream=stream, filename="p.jsonl", source="seed")
    assert result == ImportResult(created=3, skipped=0)
    assert result.as_dict() == {"created": 3, "skipped": 0, "comparisons": 0}
    colour = Prompt.objects.get(tags=["easy"])
    assert colour.messages[0] == {"role": "system", "content": "Be brief."}
    assert colour.source == "seed"
    assert Prompt.objects.get(source="forum").messages == [{"role": "user", "content": "Explain rain."}]


def test_prompts_import_from_csv_with_tags(project):
    data = b'prompt,tags\n"Hello, who are you?","greeting, chat"\nWhat is rust?,\n'
    result = imports.import_prompts(project=project, stream=io.BytesIO(data), filename="prompts.CSV")
    assert result.created == 2
    hello = Prompt.objects.get(tags=["greeting", "chat"])
    assert hello.messages == [{"role": "user", "content": "Hello, who are you?"}]
    assert hello.source == "prompts.CSV"


def test_csv_errors_name_the_line_and_column(project):
    with pytest.raises(ImportFailed, match=r'^line 3, field "prompt": must not be empty'):
        imports.import_prompts(project=project, stream=io.BytesIO(b"prompt\nfine\n  \n"), filename="p.csv")
    with pytest.raises(ImportFailed, match=r'^line 1, field "prompt": the header row must name'):
        imports.import_prompts(project=project, stream=io.BytesIO(b"question\nfine\n"), filename="p.csv")
    assert Prompt.objects.count() == 0


def test_a_csv_quote_never_closed_is_refused_at_its_line_and_nothing_is_imported(project):
    lines = [b"prompt"] + [b"Question %d about the weather" % i for i in range(1, 10_000)]
    lines[5_000] = b'"Question 5000 with a stray quote'
    with pytest.raises(ImportFailed, match=r'^line 5001: a quoted cell opens here and its closing " never comes'):
        imports.import_prompts(project=project, stream=io.BytesIO(b"\n".join(lines) + b"\n"), filename="p.csv")
    with pytest.raises(ImportFailed, match=r"^line 2: invalid CSV: ',' expected after"):
        imports.import_prompts(project=project, stream=io.BytesIO(b'prompt,tags\n"quoted"tail,x\n'), filename="p.csv")
    assert Prompt.objects.count() == 0
    doubled = b'prompt\n"She said ""hi"", then left"\nplain\n'
    assert imports.import_prompts(project=project, stream=io.BytesIO(doubled), filename="p.csv").created == 2


@override_settings(TEXT_MAX_CHARS=1_000)
def test_a_text_over_the_limit_is_refused_naming_line_field_and_limit(project):
    rows = [{"prompt": "short"}, {"prompt": "y" * 1_001}]
    with pytest.raises(ImportFailed, match=r'^line 2, field "prompt": is 1,001 characters; one text may hold at most '
                                           r"1,000 \(TEXT_MAX_CHARS\)"):
        imports.import_prompt_rows(project=project, rows=rows)
    long_turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
                 {"role": "user", "content": "z" * 2_000}]
    with pytest.raises(ImportFailed, match=r'^line 1, field "messages\[2\].content": is 2,000 characters'):
        imports.import_prompt_rows(project=project, rows=[{"messages": long_turn}])
    completion = [{"prompt": "Hi?", "checkpoint": "m1", "text": "w" * 5_000}]
    with pytest.raises(ImportFailed, match=r'^line 1, field "text": is 5,000 characters'):
        imports.import_completion_rows(project=project, rows=completion)
    assert Prompt.objects.count() == 0


def test_duplicate_prompts_are_skipped_not_errors(project):
    imports.import_prompts(project=project, stream=jsonl({"prompt": "Same?"}), filename="a.jsonl")
    result = imports.import_prompts(
        project=project,
        stream=jsonl({"prompt": "Same?"}, {"messages": [{"role": "user", "content": "Same?"}]}, {"prompt": "New"}),
        filename="b.jsonl",
    )
    assert result == ImportResult(created=1, skipped=2)
    assert Prompt.objects.count() == 2


@pytest.mark.parametrize(
    ("line3", "field", "message"),
    [
        ({"prompt": 42}, "prompt", "must be a string or a list of messages"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages", "role must be one of"),
        ({"prompt": "ok", "tags": "x"}, "tags", "must be a list of strings"),
        ({"title": "no prompt"}, "prompt", "is missing"),
    ],
)
def test_bad_prompt_on_line_3_names_line_and_field_and_stores_nothing(project, line3, field, message):
    before = counts()
    with pytest.raises(ImportFailed) as failure:
        imports.import_prompts(
            project=project, stream=jsonl({"prompt": "one"}, {"prompt": "two"}, line3), filename="p.jsonl"
        )
    assert failure.value.line == 3
    assert failure.value.field == field
    assert str(failure.value).startswith(f'line 3, field "{field}": ')
    assert message in str(failure.value)
    assert counts() == before


def test_invalid_json_and_non_utf8_name_the_line(project):
    before = counts()
    with pytest.raises(ImportFailed, match=r"^line 3: invalid JSON"):
        imports.import_prompts(
            project=project, stream=io.BytesIO(b'{"prompt": "a"}\n\n{"prompt": "b",}\n'), filename="p.jsonl"
        )
    with pytest.raises(ImportFailed, match=r"^line 2: is not UTF-8"):
        imports.import_prompts(
            project=project, stream=io.BytesIO(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n'), filename="p.jsonl"
        )
    with pytest.raises(ImportFailed, match="no rows"):
        imports.import_prompts(project=project, stream=io.BytesIO(b"\n\n"), filename="p.jsonl")
    assert counts() == before


@override_settings(IMPORT_MAX_BYTES=64)
def test_oversized_file_is_refused_before_parsing(project):
    big = jsonl(*({"prompt": f"prompt number {i}"} for i in range(10)))
    with pytest.raises(ImportFailed, match="limited to 64 bytes"):
        imports.import_prompts(project=project, stream=big, filename="p.jsonl")

    class Unseekable(io.RawIOBase):  # a pipe or request body: the bounded read counts instead
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            return self.inner.readinto(buffer)

    with pytest.raises(ImportFailed, match="more than 64 bytes"):
        imports.import_prompts(project=project, stream=Unseekable(big.getvalue()), filename="p.jsonl")
    assert Prompt.objects.count() == 0


def test_prompt_rows_from_a_json_body_number_lines_from_one(project):
    result = imports.import_prompt_rows(project=project, rows=[{"prompt": "a"}, {"prompt": "b"}])
    assert result.created == 2 and Prompt.objects.filter(source="api").count() == 2
    with pytest.raises(ImportFailed) as failure:
        imports.import_prompt_rows(project=project, rows=[{"prompt": "c"}, {"prompt": "d"}, "not an object"])
    assert failure.value.line == 3
    assert Prompt.objects.count() == 2


def test_completions_import_creates_prompts_checkpoints_and_comparisons(project):
    rows = [
        {"prompt": "Q1", "checkpoint": "base", "text": "A1 base", "sampling": {"temperature": 0.7}, "seed": 1},
        {"prompt": "Q1", "checkpoint": "dpo-1", "text": "A1 dpo"},
        {"prompt": "Q1", "checkpoint": "dpo-2", "text": "A1 dpo2"},
        {"prompt": [{"role": "user", "content": "Q2"}], "checkpoint": "base", "text": "A2 base"},
        {"prompt": "Q2", "checkpoint": "dpo-1", "text": "A2 dpo"},
        {"prompt": "Q3", "checkpoint": "base", "text": "only one"},
    ]
    result = imports.import_completions(project=project, stream=jsonl(*rows), filename="c.jsonl")
    assert result == ImportResult(created=6, skipped=0, comparisons=3 + 1)
    assert set(Checkpoint.objects.values_list("name", flat=True)) == {"base", "dpo-1", "dpo-2"}
    assert Prompt.objects.count() == 3
    first = Completion.objects.get(text="A1 base")
    assert first.sampling == {"temperature": 0.7} and first.seed == 1
    for comparison in Comparison.objects.select_related("completion_a", "completion_b"):
        assert comparison.completion_a.checkpoint_id != comparison.completion_b.checkpoint_id
        assert comparison.completion_a.prompt_id == comparison.completion_b.prompt_id == comparison.prompt_id

    again = imports.import_completions(project=project, stream=jsonl(*rows), filename="c.jsonl")
    assert again == ImportResult(created=0, skipped=6, comparisons=0)


def test_bad_completion_on_line_3_stores_nothing(project):
    before = counts()
    rows = [
        {"prompt": "Q1", "checkpoint": "base", "text": "A"},
        {"prompt": "Q1", "checkpoint": "new", "text": "B"},
        {"prompt": "Q1", "checkpoint": "new2", "text": ""},
    ]
    with pytest.raises(ImportFailed, match=r'^line 3, field "text": must not be empty'):
        imports.import_completions(project=project, stream=jsonl(*rows), filename="c.jsonl")
    with pytest.raises(ImportFailed, match=r'^line 1, field "seed"'):
        bad_seed = {"prompt": "Q", "checkpoint": "c", "text": "t", "seed": "1"}
        imports.import_completion_rows(project=project, rows=[bad_seed])
    with pytest.raises(ImportFailed, match="JSONL only"):
        imports.import_completions(project=project, stream=io.BytesIO(b"prompt\nx\n"), filename="c.csv")
    assert counts() == before


def test_trl_preferences_import_as_closed_comparisons_that_export_back(project):
    rows = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "margin": 1.0},
        {"prompt": [{"role": "user", "content": "Sky colour?"}],
         "chosen": [{"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "assistant", "content": "Green."}]},
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
    ]
    result = imports.import_preferences(project=project, stream=jsonl(*rows), filename="prefs.jsonl")
    assert result == ImportResult(created=3, skipped=0, comparisons=3)
    assert set(Comparison.objects.values_list("state", "reason", "vote_count")) == {("closed", "imported", 1)}
    user = get_user_model().objects.get(username="imported")
    assert not user.is_active and not user.has_usable_password()
    assert set(Vote.objects.values_list("source", "annotator")) == {("imported", user.pk)}
    assert Vote.objects.get(winner__text="Paris.").strength == 3
    assert Checkpoint.objects.get().name == "imported"

    exported = {
        row["prompt"]: (row["chosen"], row["rejected"]) for row in export_rows(project=project, fmt="trl")
    }
    assert exported == {
        "Capital of France?": ("Paris.", "Lyon."), "Sky colour?": ("Blue.", "Green."), "2+2?": ("4", "5"),
    }
    again = imports.import_preferences(project=project, stream=jsonl(*rows), filename="prefs.jsonl")
    assert again == ImportResult(created=0, skipped=3, comparisons=0)


def test_preference_positions_are_randomised(project):
    rows = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    imports.import_preferences(project=project, stream=jsonl(*rows), filename="p.jsonl")
    choices = set(Vote.objects.values_list("choice", flat=True))
    assert choices == {"a", "b"}
    assert all(vote.winner.text.startswith("good") for vote in Vote.objects.select_related("winner"))


@pytest.mark.parametrize(
    ("line3", "field"),
    [
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "rejected"),
        ({"prompt": "Q", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "y"}, "chosen"),
        ({"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "user", "content": "x"}],
          "rejected": [{"role": "assistant", "content": "y"}]}, "chosen"),
        ({"prompt": "Q", "chosen": "x", "rejected": "y", "margin": "big"}, "margin"),
        ({"prompt": "Q", "chosen": "x"}, "rejected"),
    ],
)
def test_bad_preference_on_line_3_stores_nothing(project, line3, field):
    before = counts()
    good = [{"prompt": "A?", "chosen": "yes", "rejected": "no"}, {"prompt": "B?", "chosen": "yes", "rejected": "no"}]
    with pytest.raises(ImportFailed) as failure:
        imports.import_preferences(project=project, stream=jsonl(*good, line3), filename="p.jsonl")
    assert (failure.value.line, failure.value.field) == (3, field)
    assert counts() == before


def test_import_commands_report_and_fail_with_command_error(project, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n{"prompt": 3}\n')
    with pytest.raises(CommandError, match=r'line 2, field "prompt"'):
        call_command("import_prompts", project="demo", file=str(prompts))
    prompts.write_text('{"prompt": "Hi"}\n')
    out = io.StringIO()
    call_command("import_prompts", project="demo", file=str(prompts), stdout=out)
    assert "1 prompts created" in out.getvalue()
    completions = tmp_path / "c.jsonl"
    completions.write_text(
        '{"prompt": "Hi", "checkpoint": "x", "text": "Hello"}\n{"prompt": "Hi", "checkpoint": "y", "text": "Hey"}\n'
    )
    call_command("import_completions", project="demo", file=str(completions), stdout=out)
    assert "1 comparisons built" in out.getvalue()
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}\n')
    call_command("import_preferences", project="demo", file=str(prefs), stdout=out)
    assert "1 preferences imported" in out.getvalue()
    with pytest.raises(CommandError, match="no project"):
        call_command("import_prompts", project="nope", file=str(prompts))
