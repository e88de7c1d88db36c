"""The annotator's comforts: undo the last vote, say how much better after the choice, flag a pair.

Each test drives the plain-POST pages (no JavaScript) as the annotator does, and checks what is
stored: the vote gone or changed, the counts, who gets the pair next, what a replay does.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate import review, snapshots
from annotate.models import Comparison, Flag, Lease, Membership, Vote, WithdrawnVote
from annotate.queue import comparison_next
from annotate.services import InvalidInput, user_with_role
from annotate.votes import IdempotencyConflict, NotAmendable, NotVotable, vote_record, vote_withdraw
from tests.conftest import PASSWORD


@pytest.fixture
def page(client, project, annotator):
    client.force_login(annotator)
    return reverse("compare", args=[project.slug])


def _vote(client, project, comparison, choice="a", key="k1", *, follow=False):
    return client.post(reverse("vote", args=[project.slug, comparison.pk]),
                       {"choice": choice, "idempotency_key": key}, follow=follow)


def test_undo_withdraws_the_vote_and_the_pair_comes_back_first(client, page, project, annotator, comparisons):
    first = client.get(page).context["comparison"]
    _vote(client, project, first, "a", key="first-key")
    after = client.get(page)
    html = after.content.decode()
    vote = Vote.objects.get(annotator=annotator)
    assert after.context["comparison"].pk != first.pk
    assert "Recorded: <strong>A is better</strong>" in html and reverse("vote-undo", args=[project.slug, vote.pk]) in html

    response = client.post(reverse("vote-undo", args=[project.slug, vote.pk]), follow=True)
    assert not Vote.objects.filter(annotator=annotator).exists()
    assert Comparison.objects.get(pk=first.pk).vote_count == 0
    # The undone pair is shown again at once, ahead of the one that replaced it, and the undo line is gone.
    assert response.context["comparison"].pk == first.pk
    assert "was undone" in response.content.decode() and "data-last-vote" not in response.content.decode()
    withdrawn = WithdrawnVote.objects.get()
    assert (withdrawn.comparison_id, withdrawn.choice, withdrawn.idempotency_key) == (first.pk, "a", "first-key")

    # A replay of the original request (same idempotency key) records nothing.
    replay = _vote(client, project, first, "a", key="first-key", follow=True)
    assert "was undone" in replay.content.decode() and not Vote.objects.exists()
    # A new vote on the pair (the page's new key) counts once.
    _vote(client, project, first, "b", key="second-key")
    assert list(Vote.objects.values_list("comparison_id", "choice")) == [(first.pk, "b")]
    assert Comparison.objects.get(pk=first.pk).vote_count == 1


def test_an_undo_reopens_a_comparison_the_vote_had_closed(project, annotator, comparisons):
    comparison = comparisons[0]
    outcome = vote_record(annotator=annotator, comparison_id=comparison.pk, choice="tie", idempotency_key="x")
    assert Comparison.objects.get(pk=comparison.pk).state == Comparison.State.CLOSED  # overlap 1
    vote_withdraw(annotator=annotator, vote_id=outcome.vote.pk)
    reopened = Comparison.objects.get(pk=comparison.pk)
    assert (reopened.state, reopened.vote_count) == (Comparison.State.OPEN, 0)
    lease = Lease.objects.get(comparison=comparison, annotator=annotator)
    assert lease.expires_at > timezone.now() and not lease.skipped


def test_undo_is_refused_late_in_a_snapshot_for_someone_else_or_twice(project, annotator, comparisons, settings,
                                                                      tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    other = user_with_role(project=project, username="other", password=PASSWORD, role=Membership.Role.ANNOTATOR)
    mine = vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="a").vote
    with pytest.raises(NotAmendable, match="more than 120 seconds ago"):
        vote_withdraw(annotator=annotator, vote_id=mine.pk, now=timezone.now() + timedelta(seconds=121))
    with pytest.raises(Exception, match=f"you have no vote {mine.pk}"):
        vote_withdraw(annotator=other, vote_id=mine.pk)
    snapshot = snapshots.snapshot_freeze(project=project)
    with pytest.raises(NotAmendable, match=f"already in snapshot {snapshot.pk}"):
        vote_withdraw(annotator=annotator, vote_id=mine.pk)
    later = vote_record(annotator=annotator, comparison_id=comparisons[1].pk, choice="b").vote
    vote_withdraw(annotator=annotator, vote_id=later.pk)
    with pytest.raises(Exception, match="may have been undone already"):
        vote_withdraw(annotator=annotator, vote_id=later.pk)
    assert list(Vote.objects.values_list("pk", flat=True)) == [mine.pk]
    assert Comparison.objects.get(pk=comparisons[1].pk).vote_count == 0  # decremented once, not twice


def test_a_replay_through_the_api_after_an_undo_is_a_409_and_stores_nothing(api, project, annotator, comparisons):
    url = reverse("api-vote", args=[project.slug, comparisons[0].pk]) if _has_route("api-vote") else None
    body = {"choice": "a", "idempotency_key": "api-key"}
    vote = vote_record(annotator=annotator, comparison_id=comparisons[0].pk, **body).vote
    vote_withdraw(annotator=annotator, vote_id=vote.pk)
    with pytest.raises(IdempotencyConflict, match="was undone"):
        vote_record(annotator=annotator, comparison_id=comparisons[0].pk, **body)
    if url:
        response = api("post", url, body)
        assert response.status_code == 409 and "was undone" in response.json()["error"]
    assert not Vote.objects.exists()


def _has_route(name: str) -> bool:
    from django.urls import NoReverseMatch

    try:
        reverse(name, args=["x", 1])
    except NoReverseMatch:
        return False
    return True


def test_strength_can_be_given_after_the_choice(client, page, project, annotator, comparisons):
    first = client.get(page).context["comparison"]
    _vote(client, project, first, "b")
    vote = Vote.objects.get()
    assert vote.strength is None
    html = client.get(page).content.decode()
    assert reverse("vote-strength", args=[project.slug, vote.pk]) in html and 'data-last-strength="7"' in html

    response = client.post(reverse("vote-strength", args=[project.slug, vote.pk]), {"strength": "3"}, follow=True)
    assert Vote.objects.get().strength == 3
    assert "Recorded: <strong>B is better</strong>, much better." in response.content.decode()
    bad = client.post(reverse("vote-strength", args=[project.slug, vote.pk]), {"strength": "9"}, follow=True)
    assert "strength must be 1 (slightly), 2 (clearly) or 3 (much better), not 9" in bad.content.decode()
    assert Vote.objects.get().strength == 3


def test_a_tie_has_no_strength_to_give(project, annotator, comparisons):
    from annotate.votes import VoteError, vote_strength_set

    vote = vote_record(annotator=annotator, comparison_id=comparisons[0].pk, choice="tie").vote
    with pytest.raises(VoteError, match="only a winner has a strength"):
        vote_strength_set(annotator=annotator, vote_id=vote.pk, strength=2)


def test_the_guidelines_open_beside_the_pair(client, page, comparisons):
    html = client.get(page).content.decode()
    panel = html[html.index('<details class="guidelines-panel"'):]
    panel = panel[:panel.index("</details>")]
    assert "<h1>Be fair</h1>" in panel and "Pick the <em>better</em> answer." in panel


def test_a_flag_takes_the_pair_out_of_every_queue_until_a_manager_returns_it(client, page, project, annotator,
                                                                              manager, comparisons):
    other = user_with_role(project=project, username="other", password=PASSWORD, role=Membership.Role.ANNOTATOR)
    first = client.get(page).context["comparison"]
    response = client.post(reverse("flag", args=[project.slug, first.pk]),
                           {"reason": "harmful", "note": "<script>alert(1)</script> asks for a weapon"}, follow=True)
    assert "out of the queue until a manager" in response.content.decode()
    assert response.context["comparison"].pk != first.pk
    assert Comparison.objects.get(pk=first.pk).state == Comparison.State.FLAGGED
    # Nobody is given it, and a vote on it is refused with a reason.
    assert comparison_next(project=project, annotator=other).pk != first.pk
    with pytest.raises(NotVotable, match="flagged"):
        vote_record(annotator=other, comparison_id=first.pk, choice="a")

    client.force_login(manager)
    review_page = client.get(reverse("manage-flags", args=[project.slug])).content.decode()
    assert f'data-flagged="{first.pk}"' in review_page and "harmful or unsafe content" in review_page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; asks for a weapon" in review_page
    client.post(reverse("manage-flags-resolve", args=[project.slug]), {"comparison": first.pk, "resolution": "returned"})
    assert Comparison.objects.get(pk=first.pk).state == Comparison.State.OPEN
    flag = Flag.objects.get()
    assert (flag.resolution, flag.resolved_by) == ("returned", manager)
    # Back in the queue (first in line again) for everyone but the person who flagged it.
    Lease.objects.filter(annotator=other).delete()
    assert comparison_next(project=project, annotator=other).pk == first.pk
    Lease.objects.filter(annotator=annotator, skipped=False).delete()
    assert comparison_next(project=project, annotator=annotator).pk != first.pk


def test_a_removed_pair_stays_out_of_the_queue_and_its_votes_out_of_the_data(client, project, annotator, manager,
                                                                              comparisons, settings, tmp_path):
    from annotate.exports import export_rows

    settings.ARTIFACTS_DIR = tmp_path
    other = user_with_role(project=project, username="other", password=PASSWORD, role=Membership.Role.ANNOTATOR)
    for comparison in comparisons[:2]:
        vote_record(annotator=other, comparison_id=comparison.pk, choice="a")  # voted before anyone flagged it
    review.comparison_flag(comparison=comparisons[0], annotator=annotator, reason="broken")
    review.comparison_flag(comparison=comparisons[0], annotator=annotator, reason="broken")  # twice: one flag
    assert Flag.objects.count() == 1
    client.force_login(manager)
    client.post(reverse("manage-flags-resolve", args=[project.slug]),
                {"comparison": comparisons[0].pk, "resolution": "removed"})
    assert Comparison.objects.get(pk=comparisons[0].pk).state == Comparison.State.REMOVED
    page = client.get(reverse("manage-flags", args=[project.slug])).content.decode()
    assert "data-no-flags" in page
    assert [r["comparison_id"] for r in export_rows(project=project, fmt="raw")] == [comparisons[1].pk]
    assert snapshots.snapshot_freeze(project=project).count == 1


@pytest.mark.parametrize("data, message", [
    ({"reason": "nonsense"}, "reason must be one of"),
    ({"reason": "other", "note": "x" * 2001}, "note is longer than 2,000 characters"),
    ({"reason": "other", "note": "bad\x00byte"}, "NUL"),
])
def test_a_bad_flag_is_a_clear_message_and_changes_nothing(client, page, project, comparisons, data, message):
    first = client.get(page).context["comparison"]
    response = client.post(reverse("flag", args=[project.slug, first.pk]), data, follow=True)
    assert response.status_code == 200 and message in response.content.decode()
    assert not Flag.objects.exists() and Comparison.objects.get(pk=first.pk).state == Comparison.State.OPEN


def test_only_managers_review_flags_and_bad_resolutions_are_400s(client, project, annotator, manager, comparisons):
    review.comparison_flag(comparison=comparisons[0], annotator=annotator, reason="other")
    client.force_login(annotator)
    assert client.get(reverse("manage-flags", args=[project.slug])).status_code == 403
    assert client.post(reverse("manage-flags-resolve", args=[project.slug]),
                       {"comparison": comparisons[0].pk, "resolution": "removed"}).status_code == 403
    client.force_login(manager)
    url = reverse("manage-flags-resolve", args=[project.slug])
    for data in ({"comparison": "abc", "resolution": "removed"}, {"comparison": comparisons[0].pk, "resolution": "x"},
                 {"comparison": comparisons[1].pk, "resolution": "returned"}, {"comparison": 10**30}):
        assert client.post(url, data).status_code == 400
    assert Comparison.objects.get(pk=comparisons[0].pk).state == Comparison.State.FLAGGED
    with pytest.raises(InvalidInput):
        review.flag_resolve(project=project, comparison_id=comparisons[0].pk, manager=manager, resolution="maybe")
