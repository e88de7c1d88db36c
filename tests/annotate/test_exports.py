"""Exports and snapshots: exact keys per format, aggregation of several voters, Parquet, frozen files."""
from __future__ import annotations

import hashlib
import io
import json
import stat

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command

from annotate import services
from annotate.exports import EXPORT_FORMATS, aggregate, export_rows, export_stream, write_export
from annotate.models import Membership, Snapshot
from annotate.pseudonyms import pseudonym
from annotate.services import InvalidInput
from annotate.snapshots import snapshot_freeze, snapshot_path
from annotate.votes import vote_record
from tests.conftest import PASSWORD, make_comparisons

KEYS = {
    "trl": {"prompt", "chosen", "rejected"},
    "trl-conversational": {"prompt", "chosen", "rejected"},
    "hh-rlhf": {"chosen", "rejected"},
    "raw": {
        "comparison_id", "prompt_id", "prompt", "a", "b", "checkpoint_a", "checkpoint_b", "choice", "winner",
        "strength", "rationale", "annotator", "source", "time_spent_ms", "created_at", "majority", "agreement",
        "votes",
    },
    "pairs": {"prompt_id", "prompt", "chosen", "rejected", "tie", "strength", "annotators", "agreement"},
    "kto": {"prompt", "completion", "label"},
    "kto-conversational": {"prompt", "completion", "label"},
}


def people(project, n: int) -> list:
    return [
        services.user_with_role(
            project=project, username=f"voter{i}", password=PASSWORD, role=Membership.Role.ANNOTATOR
        )
        for i in range(n)
    ]


def text(comparison, side: str) -> str:
    return (comparison.completion_a if side == "a" else comparison.completion_b).text


def iso_times(table_rows: list[dict]) -> list[dict]:
    """Parquet rows with their timestamps written as JSONL writes them (ISO 8601, UTC)."""
    for row in table_rows:
        for key in ("created_at", "voted_at"):
            if isinstance(row.get(key), list):
                row[key] = [when.isoformat() for when in row[key]]
            elif row.get(key) is not None:
                row[key] = row[key].isoformat()
    return table_rows


def rows(project, fmt: str) -> list[dict]:
    return list(export_rows(project=project, fmt=fmt))


@pytest.fixture
def judged(project, annotator):
    """Four single-vote comparisons: A wins (strength 3), B wins, a tie, both bad."""
    comparisons = make_comparisons(project, 4)
    for comparison, choice, strength in zip(comparisons, ["a", "b", "tie", "both_bad"], [3, None, None, None], strict=True):
        vote_record(annotator=annotator, comparison_id=comparison.pk, choice=choice, strength=strength,
                    rationale="because", time_spent_ms=1200)
    return comparisons


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_format_has_exactly_its_keys(project, judged, fmt):
    exported = rows(project, fmt)
    assert exported
    extra = {"margin"} if fmt in ("trl", "trl-conversational") else set()  # one vote has a strength
    assert all(set(row) == KEYS[fmt] | extra for row in exported)


def test_pairwise_formats_keep_only_clear_winners_and_raw_keeps_every_vote(project, judged):
    win_a, win_b, tie, both_bad = judged
    expected = [(text(win_a, "a"), text(win_a, "b")), (text(win_b, "b"), text(win_b, "a"))]
    assert [(r["chosen"], r["rejected"]) for r in rows(project, "trl")] == expected
    assert [r["margin"] for r in rows(project, "trl")] == [1.0, 0.0]
    conversational = rows(project, "trl-conversational")
    assert conversational[0]["prompt"] == [{"role": "user", "content": "Question 0 for demo?"}]
    assert conversational[0]["chosen"] == [{"role": "assistant", "content": text(win_a, "a")}]
    assert rows(project, "hh-rlhf")[1] == {
        "chosen": f"\n\nHuman: Question 1 for demo?\n\nAssistant: {text(win_b, 'b')}",
        "rejected": f"\n\nHuman: Question 1 for demo?\n\nAssistant: {text(win_b, 'a')}",
    }
    raw = rows(project, "raw")
    assert [r["choice"] for r in raw] == ["a", "b", "tie", "both_bad"]
    assert raw[0] | {"created_at": None} == {
        "comparison_id": win_a.pk, "prompt_id": win_a.prompt_id,
        "prompt": [{"role": "user", "content": "Question 0 for demo?"}],
        "a": text(win_a, "a"), "b": text(win_a, "b"),
        "checkpoint_a": win_a.completion_a.checkpoint.name, "checkpoint_b": win_a.completion_b.checkpoint.name,
        "choice": "a", "winner": "a", "strength": 3, "rationale": "because", "annotator": pseudonym("annotator"),
        "source": "human", "time_spent_ms": 1200, "created_at": None, "majority": "a", "agreement": 1.0, "votes": 1,
    }
    assert raw[2]["winner"] is None and raw[2]["strength"] is None
    pairs = rows(project, "pairs")
    assert [(p["prompt_id"], p["tie"]) for p in pairs] == [(win_a.prompt_id, False), (win_b.prompt_id, False),
                                                          (tie.prompt_id, True)]
    assert both_bad.prompt_id not in {p["prompt_id"] for p in pairs}


def test_three_voters_majority_decides_with_agreement_two_thirds(project, comparisons):
    project.votes_per_comparison = 3
    project.save(update_fields=["votes_per_comparison"])
    first, split = comparisons[0], comparisons[1]
    voters = people(project, 3)
    for voter, choice, strength in zip(voters, ["b", "b", "a"], [1, 3, 2], strict=True):
        vote_record(annotator=voter, comparison_id=first.pk, choice=choice, strength=strength)
    for voter, choice in zip(voters, ["a", "b"], strict=False):  # an even split: no pairwise row, a tie in pairs
        vote_record(annotator=voter, comparison_id=split.pk, choice=choice)

    (trl,) = rows(project, "trl")
    assert (trl["chosen"], trl["rejected"]) == (text(first, "b"), text(first, "a"))
    pairs = rows(project, "pairs")
    assert pairs[0] | {"agreement": None} == {
        "prompt_id": first.prompt_id, "prompt": first.prompt.messages,
        "chosen": [{"role": "assistant", "content": text(first, "b")}],
        "rejected": [{"role": "assistant", "content": text(first, "a")}], "tie": False, "strength": 1, "annotators": 3, "agreement": None,
    }
    assert pairs[0]["agreement"] == pytest.approx(2 / 3)
    assert pairs[1]["tie"] is True and pairs[1]["agreement"] == 0.5
    raw = rows(project, "raw")
    assert len(raw) == 5
    assert {(r["comparison_id"], r["majority"], r["votes"]) for r in raw} == {(first.pk, "b", 3), (split.pk, None, 2)}
    assert all(r["agreement"] == pytest.approx(2 / 3) for r in raw if r["comparison_id"] == first.pk)


def test_aggregate_rules():
    assert aggregate([("a", 3), ("a", 1), ("tie", None)]).strength == 1  # lower median of {1, 3}
    assert aggregate([("tie", None), ("tie", None), ("a", 2)]).choice == "tie"
    assert aggregate([("a", None), ("both_bad", None)]).choice is None


def test_multi_turn_prompts_render_as_text_in_trl(project, annotator):
    prompt, _ = services.prompt_get_or_create(project=project, messages=[
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Joke?"},
    ])
    checkpoint = services.checkpoint_get_or_create(project=project, name="c")
    one, _ = services.completion_get_or_create(prompt=prompt, checkpoint=checkpoint, text="Knock knock.")
    two, _ = services.completion_get_or_create(prompt=prompt, checkpoint=checkpoint, text="No.")
    comparison, _ = services.comparison_create(first=one, second=two)
    vote_record(annotator=annotator, comparison_id=comparison.pk,
                choice="a" if comparison.completion_a_id == one.pk else "b")
    (row,) = rows(project, "trl")
    assert row == {
        "prompt": "\n\nSystem: Be kind.\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: ",
        "chosen": "Knock knock.", "rejected": "No.",
    }
    assert rows(project, "hh-rlhf")[0]["chosen"] == row["prompt"] + "Knock knock."


def test_export_reads_votes_in_a_constant_number_of_queries(project, annotator, django_assert_max_num_queries):
    for comparison in make_comparisons(project, 30):
        vote_record(annotator=annotator, comparison_id=comparison.pk, choice="a")
    for fmt in EXPORT_FORMATS:
        with django_assert_max_num_queries(3):
            assert len(rows(project, fmt)) == (60 if fmt.startswith("kto") else 30)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_jsonl_and_parquet_files_hold_the_same_rows(project, judged, tmp_path, fmt):
    streamed = b"".join(export_stream(project=project, fmt=fmt))
    assert write_export(project=project, fmt=fmt, path=tmp_path / "out.jsonl") == len(streamed.splitlines())
    assert (tmp_path / "out.jsonl").read_bytes() == streamed
    count = write_export(project=project, fmt=fmt, path=tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == count
    assert iso_times(table.to_pylist()) == [json.loads(line) for line in streamed.splitlines()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.parquet"]  # no temp files left


def test_empty_parquet_export_is_a_readable_file(project, tmp_path):
    assert write_export(project=project, fmt="pairs", path=tmp_path / "empty.parquet") == 0
    assert pq.read_table(tmp_path / "empty.parquet").column_names == sorted(KEYS["pairs"], key=list(
        ["prompt_id", "prompt", "chosen", "rejected", "tie", "strength", "annotators", "agreement"]).index)


def test_export_command_writes_parquet_with_a_progress_bar(project, judged, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    call_command("export_preferences", project="demo", format="raw", out=str(tmp_path / "raw.parquet"),
                 stdout=out, stderr=err)
    assert "4 rows written" in out.getvalue()
    assert "4/4" in err.getvalue()
    assert pq.read_table(tmp_path / "raw.parquet").num_rows == 4


def test_snapshot_freezes_an_immutable_file_whose_sha256_matches_the_row(project, judged, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    snapshot = snapshot_freeze(project=project)
    path = snapshot_path(snapshot)
    assert snapshot.uri == path.as_uri() and path.parent == tmp_path / "artifacts" / "snapshots" / "demo"
    assert path.name.endswith("-3.jsonl")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == snapshot.sha256
    assert (snapshot.count, snapshot.votes, snapshot.format) == (3, 4, "pairs")
    assert [json.loads(line) for line in data.splitlines()] == rows(project, "pairs")
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    filtered = snapshot_freeze(project=project, filters={"sources": ["imported"]})
    assert (filtered.count, filtered.votes, filtered.filters) == (0, 0, {"sources": ["imported"]})
    assert snapshot_path(filtered) != path and path.read_bytes() == data

    out = io.StringIO()
    call_command("freeze_snapshot", project="demo", stdout=out)
    assert Snapshot.objects.count() == 3 and "3 pairs from 4 votes" in out.getvalue()


def test_progress_reports_every_vote_read(project, comparisons, monkeypatch):
    project.votes_per_comparison = 2
    project.save(update_fields=["votes_per_comparison"])
    for voter in people(project, 2):
        for comparison in comparisons:
            vote_record(annotator=voter, comparison_id=comparison.pk, choice="b")
    whole = rows(project, "raw")
    monkeypatch.setattr("annotate.exports.CHUNK_VOTES", 3)  # smaller fetches change nothing but the reports
    seen: list[int] = []
    assert list(export_rows(project=project, fmt="raw", progress=seen.append)) == whole
    assert seen == [3, 3, 3, 1] and len(whole) == 10


def test_filters_select_votes_and_misspelt_filters_are_refused(project, judged):
    assert rows(project, "raw") and not list(export_rows(project=project, fmt="raw", filters={"sources": ["ai"]}))
    later = list(export_rows(project=project, fmt="raw", filters={"after": "2999-01-01T00:00:00Z"}))
    assert later == []
    assert len(list(export_rows(project=project, fmt="pairs", filters={"for": "run 7", "closed_only": True}))) == 3
    with pytest.raises(InvalidInput, match="unknown filters"):
        list(export_rows(project=project, fmt="raw", filters={"source": ["human"]}))
    with pytest.raises(InvalidInput, match="format must be one of"):
        list(export_rows(project=project, fmt="csv"))
