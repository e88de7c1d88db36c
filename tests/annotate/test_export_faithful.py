"""Faithful exports (issue 19): KTO rows, opt-in metadata, pseudonymised annotators, Parquet
timestamps, untrusted text, and the manager's export page and the API with the command's filters."""
from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.urls import reverse

from annotate import services
from annotate.exports import EXPORT_FORMATS, export_rows, export_stream, write_export
from annotate.models import Comparison, Membership
from annotate.pseudonyms import pseudonym
from annotate.tokens import token_create
from annotate.votes import vote_record
from tests.conftest import PASSWORD

# No NUL: every way in (imports, votes, the API) refuses it, and PostgreSQL cannot store it in a text field.
UNTRUSTED = "<script>alert('x')</script> \u2028 line sep, \u0085 nel, \r\n crlf, \"quotes\" & </html>"


def comparison(project, i: int, *, a: str, b: str, reason=Comparison.Reason.RANDOM):
    prompt, _ = services.prompt_get_or_create(project=project, messages=f"Question {i}?")
    first = services.checkpoint_get_or_create(project=project, name="base")
    second = services.checkpoint_get_or_create(project=project, name="dpo-1")
    left, _ = services.completion_get_or_create(prompt=prompt, checkpoint=first, text=a,
                                                sampling={"temperature": 0.7, "top_p": 0.9}, seed=11)
    right, _ = services.completion_get_or_create(prompt=prompt, checkpoint=second, text=b, seed=12)
    made, _ = services.comparison_create(first=left, second=right, reason=reason)
    return made


@pytest.fixture
def voters(project):
    project.votes_per_comparison = 3
    project.save(update_fields=["votes_per_comparison"])
    return [services.user_with_role(project=project, username=f"person{i}", password=PASSWORD,
                                    role=Membership.Role.ANNOTATOR) for i in range(3)]


def vote_all(item, voters, choices, **extra) -> None:
    for voter, choice in zip(voters, choices, strict=False):
        vote_record(annotator=voter, comparison_id=item.pk, choice=choice, **extra)


def side(item, which: str) -> str:
    return (item.completion_a if which == "a" else item.completion_b).text


def test_kto_labels_winner_and_loser_both_bad_twice_undesirable_and_leaves_ties_out(project, voters):
    win = comparison(project, 0, a="Good answer", b="Weak answer")
    both_bad = comparison(project, 1, a="Wrong one", b="Wrong two")
    tie = comparison(project, 2, a="Same A", b="Same B")
    split = comparison(project, 3, a="Split A", b="Split B")
    vote_all(win, voters, ["b", "b", "a"], strength=3)
    vote_all(both_bad, voters, ["both_bad", "both_bad", "a"])
    vote_all(tie, voters, ["tie", "tie", "tie"])
    vote_all(split, voters[:2], ["a", "b"])

    rows = list(export_rows(project=project, fmt="kto"))
    assert rows == [
        {"prompt": "Question 0?", "completion": side(win, "b"), "label": True},
        {"prompt": "Question 0?", "completion": side(win, "a"), "label": False},
        {"prompt": "Question 1?", "completion": side(both_bad, "a"), "label": False},
        {"prompt": "Question 1?", "completion": side(both_bad, "b"), "label": False},
    ]
    conversational = list(export_rows(project=project, fmt="kto-conversational"))
    assert conversational[0] == {"prompt": [{"role": "user", "content": "Question 0?"}],
                                 "completion": [{"role": "assistant", "content": side(win, "b")}], "label": True}
    # Every value of a row is of one kind (text, or messages): TRL decides "conversational" from them.
    for row in rows:
        assert isinstance(row["prompt"], str) and isinstance(row["completion"], str)
    for row in conversational + list(export_rows(project=project, fmt="pairs")):
        assert all(isinstance(row[key], list) for key in ("prompt", "completion", "chosen", "rejected") if key in row)


def test_metadata_columns_carry_reason_sources_checkpoints_sampling_seeds_times_and_rationales(project, voters):
    item = comparison(project, 0, a="Left", b="Right", reason=Comparison.Reason.BATTLE)
    vote_record(annotator=voters[0], comparison_id=item.pk, choice="a", strength=2, rationale="clearer",
                time_spent_ms=900)
    vote_record(annotator=voters[1], comparison_id=item.pk, choice="a", source="ai")
    assert "reason" not in next(export_rows(project=project, fmt="trl"))  # opt-in

    (row,) = export_rows(project=project, fmt="trl", metadata=True)
    winner, loser = item.completion_a, item.completion_b
    assert row | {"voted_at": None} == {
        "prompt": "Question 0?", "chosen": winner.text, "rejected": loser.text, "margin": 0.5,
        "comparison_id": item.pk, "prompt_id": item.prompt_id, "reason": "battle", "sources": ["ai", "human"],
        "annotator_ids": [pseudonym("person0"), pseudonym("person1")], "choices": ["a", "a"],
        "strengths": [2, None], "rationales": ["clearer", ""], "time_spent_ms": [900, None], "voted_at": None,
        "checkpoint_chosen": winner.checkpoint.name, "checkpoint_rejected": loser.checkpoint.name,
        "sampling_chosen": json.dumps(winner.sampling, sort_keys=True),
        "sampling_rejected": json.dumps(loser.sampling, sort_keys=True),
        "seed_chosen": winner.seed, "seed_rejected": loser.seed,
        "edited_from_chosen": None, "edited_from_rejected": None,
    }
    assert all(datetime.fromisoformat(when).utcoffset().total_seconds() == 0 for when in row["voted_at"])
    (kto_win, kto_lose) = export_rows(project=project, fmt="kto", metadata=True)
    assert (kto_win["checkpoint"], kto_win["seed"], kto_lose["seed"]) == (winner.checkpoint.name, winner.seed, loser.seed)
    raw = list(export_rows(project=project, fmt="raw", metadata=True))
    assert [(r["source"], r["reason"], r["seed_a"], r["seed_b"]) for r in raw] == [
        ("human", "battle", item.completion_a.seed, item.completion_b.seed)] + [
        ("ai", "battle", item.completion_a.seed, item.completion_b.seed)]


@pytest.mark.parametrize("fmt", ["raw", "trl", "pairs", "kto"])
def test_parquet_times_are_utc_timestamps_and_match_jsonl(project, voters, tmp_path, fmt):
    item = comparison(project, 0, a="Left", b="Right")
    vote_all(item, voters, ["a", "a", "b"], strength=1)
    write_export(project=project, fmt=fmt, path=tmp_path / "x.parquet", metadata=True)
    table = pq.read_table(tmp_path / "x.parquet")
    column = "created_at" if fmt == "raw" else "voted_at"
    kind = table.schema.field(column).type
    kind = kind if fmt == "raw" else kind.value_type
    assert kind == pa.timestamp("us", tz="UTC")
    parquet_times = [t for row in table.column(column).to_pylist() for t in (row if isinstance(row, list) else [row])]
    jsonl = [json.loads(line) for line in b"".join(export_stream(project=project, fmt=fmt, metadata=True)).splitlines()]
    json_times = [t for row in jsonl for t in (row[column] if isinstance(row[column], list) else [row[column]])]
    assert [t.astimezone(UTC) for t in parquet_times] == [datetime.fromisoformat(t) for t in json_times]


def test_annotators_are_keyed_pseudonyms_unless_real_names_is_asked(project, voters, settings):
    item = comparison(project, 0, a="Left", b="Right")
    vote_all(item, voters, ["a", "b", "a"])
    names = [r["annotator"] for r in export_rows(project=project, fmt="raw")]
    assert names == [pseudonym(f"person{i}") for i in range(3)] and len(set(names)) == 3
    assert all(name.startswith("anon-") and len(name) == 21 and "person" not in name for name in names)
    assert [r["annotator"] for r in export_rows(project=project, fmt="raw")] == names  # stable across exports
    assert [r["annotator"] for r in export_rows(project=project, fmt="raw", real_names=True)] == [
        "person0", "person1", "person2"]
    settings.EXPORT_PSEUDONYM_KEY = "another deployment's key"
    assert not set(r["annotator"] for r in export_rows(project=project, fmt="raw")) & set(names)


@pytest.mark.parametrize("fmt", ["trl", "trl-conversational", "kto", "pairs", "raw"])
def test_untrusted_text_exports_verbatim_one_row_per_line(project, voters, tmp_path, fmt):
    item = comparison(project, 0, a=UNTRUSTED, b=UNTRUSTED + " 2")  # either may be shown as A
    vote_all(item, voters, ["a", "a", "a"], rationale=UNTRUSTED)
    write_export(project=project, fmt=fmt, path=tmp_path / "x.jsonl", metadata=True)
    lines = (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()  # splits on \u2028 and \x85 too
    from_jsonl = [json.loads(line) for line in lines]
    assert from_jsonl == list(export_rows(project=project, fmt=fmt, metadata=True))
    write_export(project=project, fmt=fmt, path=tmp_path / "x.parquet", metadata=True)
    from_parquet = pq.read_table(tmp_path / "x.parquet").to_pylist()
    key = {"raw": "a", "kto": "completion"}.get(fmt, "chosen")
    for rows in (from_jsonl, from_parquet):
        value = rows[0][key]
        assert (value if isinstance(value, str) else value[0]["content"]) in (UNTRUSTED, UNTRUSTED + " 2")
        assert rows[0]["rationale" if fmt == "raw" else "rationales"] in (UNTRUSTED, [UNTRUSTED] * 3)


def test_export_command_takes_metadata_and_real_names(project, voters, tmp_path):
    item = comparison(project, 0, a="Left", b="Right")
    vote_all(item, voters, ["both_bad", "both_bad", "both_bad"])
    out = io.StringIO()
    call_command("export_preferences", project="demo", format="kto", out=str(tmp_path / "k.parquet"), metadata=True,
                 real_names=True, stdout=out, stderr=io.StringIO())
    assert "2 rows written" in out.getvalue()
    table = pq.read_table(tmp_path / "k.parquet").to_pylist()
    assert [row["label"] for row in table] == [False, False]
    assert table[0]["annotator_ids"] == ["person0", "person1", "person2"]


# The manager's export page and the API: the same formats, outputs, filters and options.

def test_export_page_is_a_plain_get_form_with_every_format_output_filter_and_option(client, project, manager):
    client.force_login(manager)
    page = client.get(reverse("manage-export", args=[project.slug])).content.decode()
    assert f'<form method="get" action="{reverse("manage-export-download", args=[project.slug])}"' in page
    for fmt in ("trl", "trl-conversational", "hh-rlhf", "raw", "pairs", "kto", "kto-conversational"):
        assert f'<option value="{fmt}">' in page
    for field in ('name="output"', 'value="parquet"', 'name="sources" value="ai"', 'name="reasons" value="gold"',
                  'name="after"', 'name="before"', 'name="closed_only"', 'name="metadata"', 'name="real_names"'):
        assert field in page


def test_export_page_downloads_filtered_parquet_with_metadata(client, project, manager, voters):
    project.votes_per_comparison = 4  # room for an AI vote beside the three people
    project.save(update_fields=["votes_per_comparison"])
    battle = comparison(project, 0, a="Left", b="Right", reason=Comparison.Reason.BATTLE)
    gold = comparison(project, 1, a="Gold left", b="Gold right", reason=Comparison.Reason.GOLD)
    vote_all(battle, voters, ["a", "a", "a"])
    vote_all(gold, voters, ["b", "b", "b"])
    vote_record(annotator=manager, comparison_id=battle.pk, choice="b", source="ai")
    client.force_login(manager)
    url = reverse("manage-export-download", args=[project.slug])
    query = {"format": "raw", "output": "parquet", "sources": ["human"], "reasons": ["battle", "random"],
             "after": "2000-01-01T00:00", "before": "", "closed_only": "", "metadata": "1"}
    response = client.get(url, query)
    assert response.status_code == 200
    assert 'filename="demo-raw.parquet"' in response["Content-Disposition"]
    table = pq.read_table(io.BytesIO(b"".join(response.streaming_content)))
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    rows = table.to_pylist()
    assert [(r["reason"], r["source"], r["annotator"]) for r in rows] == [
        ("battle", "human", pseudonym(f"person{i}")) for i in range(3)]
    jsonl = client.get(url, {**query, "output": "jsonl", "real_names": "on"})
    names = [json.loads(line)["annotator"] for line in b"".join(jsonl.streaming_content).splitlines()]
    assert names == ["person0", "person1", "person2"]


@pytest.mark.parametrize("query, message", [
    ({"format": "csv"}, "format must be one of"),
    ({"output": "xlsx"}, "output must be one of"),
    ({"sources": "robot"}, "filter sources must be a list drawn from"),
    ({"reasons": "whim"}, "filter reasons must be a list drawn from"),
    ({"after": "yesterday"}, "filter after must be an ISO 8601"),
    ({"before": "2025-02-30T00:00"}, "filter before must be an ISO 8601"),
    ({"closed_only": "maybe"}, "closed_only must be 1 or 0"),
    ({"metadata": "2"}, "metadata must be 1 or 0"),
    ({"source": "human"}, "unknown parameters ['source']"),
])
def test_bad_export_requests_are_a_clear_400_on_the_page_and_the_api(client, project, manager, query, message):
    client.force_login(manager)
    response = client.get(reverse("manage-export-download", args=[project.slug]), query)
    assert response.status_code == 400 and message in response.content.decode()
    client.logout()
    token = token_create(user=manager)
    response = client.get(f"/api/projects/{project.slug}/export", query, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 400 and message in response.json()["error"]


def test_api_export_pseudonymises_by_default_and_takes_the_page_parameters(client, project, manager, voters):
    item = comparison(project, 0, a="Left", b="Right")
    vote_all(item, voters, ["both_bad"] * 3)
    token = token_create(user=manager)
    response = client.get(f"/api/projects/{project.slug}/export", {"format": "raw"},
                          HTTP_AUTHORIZATION=f"Bearer {token}")
    body = b"".join(response.streaming_content).decode()
    assert response.status_code == 200 and "person0" not in body and pseudonym("person0") in body
    kto = client.get(f"/api/projects/{project.slug}/export", {"format": "kto", "output": "parquet"},
                     HTTP_AUTHORIZATION=f"Bearer {token}")
    assert pq.read_table(io.BytesIO(b"".join(kto.streaming_content))).column("label").to_pylist() == [False, False]


def test_export_docs_name_real_tests_and_the_openrlhf_flags_those_tests_reproduce():
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "export-formats.md").read_text(encoding="utf-8")
    tests = "".join(path.read_text(encoding="utf-8") for path in (root / "tests" / "annotate").glob("test_export*.py"))
    named = set(re.findall(r"`(test_[a-z_]+)`", doc))
    assert len(named) >= 4 and all(f"def {name}(" in tests for name in named)
    for flags in ("--data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected",
                  "--data.apply_chat_template", "--data.output_key completion --data.label_key label"):
        assert flags in doc
    headings = "".join(line for line in doc.splitlines() if line.startswith("### "))
    assert all(f"`{fmt}`" in headings for fmt in EXPORT_FORMATS)  # every format has its section
