"""Edit → preference (annotate.edits): the page without JavaScript, the service's refusals, the API, the export."""
from __future__ import annotations

import itertools
import json
import random
import re
from html import unescape

import pytest
from django.test import override_settings
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate import services, snapshots
from annotate.edits import EDIT_CHECKPOINT, EditError, EditNotAllowed, edit_record
from annotate.exports import export_rows
from annotate.models import Checkpoint, Comparison, Completion, Membership, Vote
from annotate.queue import comparison_next
from annotate.tokens import token_create
from annotate.votes import NotAmendable, vote_record, vote_withdraw
from tests.annotate.test_api_openapi import _validator
from tests.annotate.test_fuzz import JSON, NAN, NASTY_TEXT, _body
from tests.conftest import PASSWORD, make_comparisons

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEXTAREA = re.compile(r'<textarea id="edit-text"[^>]*>\n(.*?)</textarea>', re.S)


def _stored() -> tuple[int, int, int]:
    return Completion.objects.count(), Comparison.objects.count(), Vote.objects.count()


def _shown(client, project) -> Comparison:
    """The pair the compare page leases to the logged-in annotator."""
    response = client.get(reverse("compare", args=[project.slug]))
    return Comparison.objects.select_related("completion_a", "completion_b").get(pk=response.context["comparison"].pk)


@pytest.fixture
def logged_in(client, annotator):
    client.force_login(annotator)
    return client


def _edit_url(project, comparison, side="") -> str:
    url = reverse("compare-edit", args=[project.slug, comparison.pk])
    return f"{url}?side={side}" if side else url


def test_edit_without_javascript_stores_a_completion_a_closed_pair_and_the_votes(logged_in, project, annotator,
                                                                                 comparisons):
    client = logged_in
    shown = _shown(client, project)
    page = client.get(_edit_url(project, shown, "a"))
    assert page.status_code == 200
    assert unescape(TEXTAREA.search(page.content.decode()).group(1)) == shown.completion_a.text
    edited = shown.completion_a.text + "\n\nAnd a better ending."
    response = client.post(reverse("compare-edit", args=[project.slug, shown.pk]),
                           {"side": "a", "text": edited.replace("\n", "\r\n"), "idempotency_key": "k1"})
    assert response.status_code == 302 and response.url == reverse("compare", args=[project.slug])

    completion = Completion.objects.get(checkpoint__name=EDIT_CHECKPOINT)
    assert completion.text == edited  # the browser's CRLF stored as LF
    assert completion.edited_from_id == shown.completion_a_id and completion.edited_by_id == annotator.pk
    assert completion.prompt_id == shown.prompt_id
    assert completion.checkpoint.state == Checkpoint.State.RETIRED
    pair = Comparison.objects.get(reason=Comparison.Reason.EDIT)
    assert {pair.completion_a_id, pair.completion_b_id} == {completion.pk, shown.completion_a_id}
    assert (pair.state, pair.vote_count, pair.prompt_id, pair.project_id) == (
        Comparison.State.CLOSED, 1, shown.prompt_id, project.pk)
    vote = Vote.objects.get(comparison=pair)
    assert (vote.annotator_id, vote.winner_id, vote.source) == (annotator.pk, completion.pk, Vote.Source.HUMAN)
    assert vote.choice == ("a" if pair.completion_a_id == completion.pk else "b")
    # The edit answered the pair it came from too: a vote for the edited side, counted once.
    original = Vote.objects.get(comparison=shown)
    assert (original.choice, original.winner_id, original.idempotency_key) == ("a", shown.completion_a_id, "k1")
    shown.refresh_from_db()
    assert shown.vote_count == 1
    # And the annotator moves on, as after a vote.
    following = client.get(reverse("compare", args=[project.slug]))
    assert following.context["comparison"].pk not in (shown.pk, pair.pk)
    assert "Your edit of answer A is saved" in following.content.decode()


def test_the_compare_page_links_to_the_edit_page_by_keyboard(logged_in, project, comparisons):
    html = logged_in.get(reverse("compare", args=[project.slug])).content.decode()
    assert 'data-edit="a"' in html and 'data-edit="b"' in html and "<kbd>E</kbd>" in html
    chooser = logged_in.get(_edit_url(project, comparisons[0])).content.decode()
    assert 'data-edit-side="a"' in chooser and 'href="?side=b"' in chooser


@pytest.mark.parametrize(("text", "message"), [
    ("", "text is empty"),
    ("   \n ", "text is empty"),
    ("Answer one (0)", "unchanged"),
    ("Answer one (0)\r\n", "unchanged"),
    ("bad \x00 byte", "NUL"),
    ("x" * 1_001, "at most 1,000"),
])
@override_settings(TEXT_MAX_CHARS=1_000)
def test_a_bad_edit_is_refused_with_its_reason_and_stores_nothing(logged_in, project, comparisons, text, message):
    shown = _shown(logged_in, project)
    side = "a" if shown.completion_a.text == "Answer one (0)" else "b"
    before = _stored()
    response = logged_in.post(reverse("compare-edit", args=[project.slug, shown.pk]), {"side": side, "text": text})
    assert response.status_code == 400
    assert message in unescape(response.content.decode())
    assert _stored() == before
    if text.strip() and "\x00" not in text:  # what was typed comes back to be fixed
        assert unescape(TEXTAREA.search(response.content.decode()).group(1)) == text.replace("\r\n", "\n")


def test_lone_surrogates_and_bad_sides_are_refused_by_the_service(project, annotator, comparisons):
    comparison = comparison_next(project=project, annotator=annotator)
    comparison = Comparison.objects.get(pk=comparison.pk)
    before = _stored()
    with pytest.raises(EditError, match="lone surrogate"):
        edit_record(comparison=comparison, annotator=annotator, side="a", text="half \ud800 a pair")
    with pytest.raises(EditError, match="side must be 'a' or 'b'"):
        edit_record(comparison=comparison, annotator=annotator, side="c", text="new")
    with pytest.raises(EditError, match="must be a string"):
        edit_record(comparison=comparison, annotator=annotator, side="a", text=42)
    assert _stored() == before


def test_posting_the_same_edit_twice_stores_it_once(logged_in, project, comparisons):
    shown = _shown(logged_in, project)
    url = reverse("compare-edit", args=[project.slug, shown.pk])
    logged_in.post(url, {"side": "b", "text": "A rewritten answer.", "idempotency_key": "same"})
    after_first = _stored()
    again = logged_in.post(url, {"side": "b", "text": "A rewritten answer.", "idempotency_key": "same"})
    assert again.status_code == 302
    assert _stored() == after_first
    assert Comparison.objects.get(reason=Comparison.Reason.EDIT).vote_count == 1
    shown.refresh_from_db()
    assert shown.vote_count == 1


def test_an_edit_after_a_vote_keeps_that_vote(project, annotator, comparisons):
    comparison = Comparison.objects.get(pk=comparison_next(project=project, annotator=annotator).pk)
    vote_record(annotator=annotator, comparison_id=comparison.pk, choice="both_bad")
    outcome = edit_record(comparison=comparison, annotator=annotator, side="b", text="Fixed.")
    assert outcome.created and outcome.original_vote.choice == "both_bad" and not outcome.original_vote_created
    comparison.refresh_from_db()
    assert comparison.vote_count == 1 and Vote.objects.filter(comparison=comparison).count() == 1


def test_a_second_annotator_with_the_same_edit_adds_a_vote_to_the_same_pair(project, annotator, comparisons):
    project.votes_per_comparison = 2
    project.save(update_fields=["votes_per_comparison"])
    other = services.user_with_role(project=project, username="other", password=PASSWORD,
                                    role=Membership.Role.ANNOTATOR)
    first = Comparison.objects.get(pk=comparison_next(project=project, annotator=annotator).pk)
    assert comparison_next(project=project, annotator=other).pk == first.pk
    one = edit_record(comparison=first, annotator=annotator, side="a", text="Same fix.")
    two = edit_record(comparison=first, annotator=other, side="a", text="Same fix.")
    assert two.created and two.comparison.pk == one.comparison.pk and two.completion.pk == one.completion.pk
    one.comparison.refresh_from_db()
    assert one.comparison.vote_count == 2 == Vote.objects.filter(comparison=one.comparison).count()
    assert one.comparison.state == Comparison.State.CLOSED
    first.refresh_from_db()
    assert first.vote_count == 2


def test_people_who_were_not_shown_the_pair_cannot_edit_it(client, project, annotator, comparisons):
    other = services.project_create(slug="other", name="Other")
    stranger = services.user_with_role(project=other, username="stranger", password=PASSWORD,
                                       role=Membership.Role.ANNOTATOR)
    make_comparisons(other, 1)
    client.force_login(stranger)
    client.get(reverse("compare", args=[other.slug]))  # holds a lease in their own project
    target = comparisons[0]
    before = _stored()
    # Another project's member: the project is not theirs, so it does not exist for them.
    assert client.get(_edit_url(project, target, "a")).status_code == 404
    assert client.post(reverse("compare-edit", args=[project.slug, target.pk]),
                       {"side": "a", "text": "Mine now."}).status_code == 404
    with pytest.raises(EditNotAllowed):
        edit_record(comparison=target, annotator=stranger, side="a", text="Mine now.")
    # A member who was never shown this pair (no lease, no vote).
    with pytest.raises(EditNotAllowed, match="not shown to you"):
        edit_record(comparison=target, annotator=annotator, side="a", text="Mine now.")
    client.force_login(annotator)
    refused = client.post(reverse("compare-edit", args=[project.slug, target.pk]), {"side": "a", "text": "Mine."})
    assert refused.status_code == 302
    assert _stored() == before


def test_html_in_an_edit_is_stored_raw_and_shown_escaped(logged_in, project, comparisons):
    shown = _shown(logged_in, project)
    hostile = '<script>alert(1)</script> <img src=x onerror="alert(2)"> **bold** </textarea><b>out</b>'
    logged_in.post(reverse("compare-edit", args=[project.slug, shown.pk]), {"side": "a", "text": hostile})
    completion = Completion.objects.get(checkpoint__name=EDIT_CHECKPOINT)
    assert completion.text == hostile
    # Its own edit page, as anyone editing it would see the raw text: escaped in the textarea.
    pair = Comparison.objects.get(reason=Comparison.Reason.EDIT)
    html = logged_in.get(_edit_url(project, pair, "a" if pair.completion_a_id == completion.pk else "b"))
    body = html.content.decode()
    assert "<script>alert(1)" not in body and "</textarea><b>out" not in body
    assert unescape(TEXTAREA.search(body).group(1)) == hostile


def test_the_edit_is_a_pair_in_the_exports_with_the_edit_chosen(project, annotator, comparisons):
    comparison = Comparison.objects.get(pk=comparison_next(project=project, annotator=annotator).pk)
    outcome = edit_record(comparison=comparison, annotator=annotator, side="a", text="The improved answer.",
                          rng=random.Random(1))
    rows = list(export_rows(project=project, fmt="pairs"))
    edit_rows = [r for r in rows if r["chosen"][-1]["content"] == "The improved answer."]
    assert len(edit_rows) == 1
    assert edit_rows[0]["rejected"][-1]["content"] == comparison.completion_a.text
    assert edit_rows[0]["tie"] is False and edit_rows[0]["annotators"] == 1
    trl = list(export_rows(project=project, fmt="trl", metadata=True))
    row = next(r for r in trl if r["comparison_id"] == outcome.comparison.pk)
    assert row["chosen"] == "The improved answer." and row["reason"] == "edit"
    assert row["checkpoint_chosen"] == EDIT_CHECKPOINT
    # The lineage: the edit names the completion it was made from; a sampled answer names none.
    assert (row["edited_from_chosen"], row["edited_from_rejected"]) == (comparison.completion_a_id, None)
    raw = next(r for r in export_rows(project=project, fmt="raw", metadata=True)
               if r["comparison_id"] == outcome.comparison.pk)
    assert comparison.completion_a_id in (raw["edited_from_a"], raw["edited_from_b"])
    assert None in (raw["edited_from_a"], raw["edited_from_b"])
    frozen = snapshots.snapshot_freeze(project=project)  # what training reads
    lines = [json.loads(line) for line in snapshots.snapshot_path(frozen).read_text().splitlines()]
    assert [r["rejected"][-1]["content"] for r in lines if r["chosen"][-1]["content"] == "The improved answer."] == [
        comparison.completion_a.text]


def test_the_vote_of_an_edit_cannot_be_undone(project, annotator, comparisons):
    comparison = Comparison.objects.get(pk=comparison_next(project=project, annotator=annotator).pk)
    outcome = edit_record(comparison=comparison, annotator=annotator, side="a", text="Better.")
    with pytest.raises(NotAmendable, match="records an edit"):
        vote_withdraw(annotator=annotator, vote_id=outcome.vote.pk)
    outcome.comparison.refresh_from_db()
    assert (outcome.comparison.state, outcome.comparison.vote_count) == (Comparison.State.CLOSED, 1)


def test_the_edit_checkpoint_is_never_served_battled_or_a_candidate(project, annotator, comparisons):
    comparison = Comparison.objects.get(pk=comparison_next(project=project, annotator=annotator).pk)
    edit_record(comparison=comparison, annotator=annotator, side="a", text="Better.")
    checkpoint = Checkpoint.objects.get(project=project, name=EDIT_CHECKPOINT)
    assert checkpoint.state == Checkpoint.State.RETIRED
    assert Checkpoint.objects.newest_candidate(project) != checkpoint
    assert Checkpoint.objects.incumbent(project) != checkpoint
    served = set()
    while (following := comparison_next(project=project, annotator=annotator)) is not None:
        served.add(following.pk)
        vote_record(annotator=annotator, comparison_id=following.pk, choice="a")
    assert not Comparison.objects.filter(pk__in=served, reason=Comparison.Reason.EDIT).exists()


def test_comparisons_build_never_pairs_an_edit(project, annotator, comparisons):
    comparison = Comparison.objects.get(pk=comparison_next(project=project, annotator=annotator).pk)
    edit_record(comparison=comparison, annotator=annotator, side="a", text="Better.")
    services.comparisons_build(project=project)
    assert Comparison.objects.filter(completion_a__checkpoint__name=EDIT_CHECKPOINT).count() + Comparison.objects.filter(
        completion_b__checkpoint__name=EDIT_CHECKPOINT).count() == 1


# The API route.

def test_the_api_records_an_edit_and_answers_as_documented(client, project, annotator, comparisons):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    pair = client.get("/api/projects/demo/comparisons/next", **headers).json()
    body = {"side": "b", "text": pair["b"]["text"] + " Now with a source.", "idempotency_key": "api-1", "next": True}
    made = client.post(f"/api/comparisons/{pair['id']}/edit", body, content_type="application/json", **headers)
    assert made.status_code == 201, made.content
    answer = made.json()
    assert answer["created"] is True and answer["edited_from"] == pair["b"]["id"]
    assert answer["original_vote"]["choice"] == "b" and answer["original_vote"]["created"] is True
    assert answer["next"] is not None and answer["next"]["id"] != pair["id"]
    spec = client.get("/api/openapi.json").json()
    _validator(spec, "/api/comparisons/{comparison_id}/edit", "post", 201).validate(answer)
    replay = client.post(f"/api/comparisons/{pair['id']}/edit", {**body, "next": False},
                         content_type="application/json", **headers)
    assert replay.status_code == 200 and replay.json()["created"] is False
    assert replay.json()["comparison"] == answer["comparison"]
    assert Completion.objects.filter(checkpoint__name=EDIT_CHECKPOINT).count() == 1


def test_the_api_refuses_bad_edits_as_problems(client, project, annotator, outsider, comparisons):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    pair = client.get("/api/projects/demo/comparisons/next", **headers).json()
    url = f"/api/comparisons/{pair['id']}/edit"
    before = _stored()
    for body, status, code, words in [
        ({"side": "a", "text": pair["a"]["text"]}, 400, "invalid_edit", "unchanged"),
        ({"side": "a", "text": ""}, 400, "invalid_edit", "empty"),
        ({"side": "a", "text": "nul \u0000"}, 400, "invalid_edit", "NUL"),
        ({"side": "x", "text": "new"}, 400, "invalid_edit", "side must be"),
        ({"side": "a"}, 400, "invalid_edit", "must be a string"),
        (["not", "an", "object"], 400, "invalid_request", "JSON object"),
    ]:
        refused = client.post(url, body, content_type="application/json", **headers)
        assert refused.status_code == status, (body, refused.content)
        assert refused.json()["code"] == code and words in refused.json()["detail"], refused.json()
    lone = client.post(url, '{"side": "a", "text": "half \\ud800"}', content_type="application/json", **headers)
    assert lone.status_code == 400 and "lone surrogate" in lone.json()["detail"]
    strangers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=outsider)}"}
    assert client.post(url, {"side": "a", "text": "new"}, content_type="application/json",
                       **strangers).status_code == 404
    assert _stored() == before


@pytest.fixture
def editor(client, annotator, project):
    """Post an edit body to the API, each time on the next of many pairs the annotator holds."""
    from datetime import timedelta

    from django.utils import timezone

    from annotate.models import Lease

    pairs = make_comparisons(project, 150)
    Lease.objects.bulk_create([Lease(comparison=c, annotator=annotator, expires_at=timezone.now() + timedelta(hours=1))
                               for c in pairs])
    pairs = itertools.cycle(pairs)  # a second round meets replays and voted pairs
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    return lambda raw: client.post(f"/api/comparisons/{next(pairs).pk}/edit", raw, content_type="application/json",
                                   **auth)


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={
    "side": st.sampled_from(["a", "b"]) | JSON, "text": NASTY_TEXT | JSON, "idempotency_key": NASTY_TEXT | JSON,
    "next": JSON}) | JSON | NAN)
def test_no_edit_body_gives_a_500_and_a_refused_one_stores_nothing(editor, body):
    before = _stored()
    response = editor(_body(body))
    assert response.status_code in (200, 201, 400, 409), (body, response.status_code, response.content[:300])
    if response.status_code >= 400:
        assert response.json()["error"]
        assert _stored() == before
    elif response.status_code == 200:
        assert _stored() == before


def test_an_edit_of_a_canary_pair_is_held_out_with_it(project, annotator, comparisons):
    comparison = Comparison.objects.get(pk=comparison_next(project=project, annotator=annotator).pk)
    Comparison.objects.filter(pk=comparison.pk).update(canary=True)
    comparison.refresh_from_db()
    outcome = edit_record(comparison=comparison, annotator=annotator, side="a", text="The improved answer.")
    assert outcome.comparison.canary  # else training would learn the canary's answer from the edit
    rows = list(export_rows(project=project, fmt="pairs"))
    assert not [r for r in rows if r["chosen"][-1]["content"] == "The improved answer."]
