"""The manager's console: who reaches it, what each page shows, and that pages cost a fixed number of queries."""
from __future__ import annotations

import hashlib
import random
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from annotate.models import (
    Checkpoint,
    Comparison,
    Completion,
    Membership,
    Prompt,
    Snapshot,
    Vote,
    messages_hash,
    text_hash,
)
from annotate.tokens import token_create
from rewardmodel.models import RewardModel
from training.models import RunStep, TrainingRun

Kind, State = TrainingRun.Kind, TrainingRun.State


def seed_project(project, *, comparisons: int = 200, voters: int = 4, runs: int = 50, start: int = 0,
                 strong: str = "cand", weak: str = "base", seed: int = 0) -> dict:
    """Bulk-create a busy project cheaply: checkpoints, comparisons with votes, snapshots, reward models, runs.

    Battles pit ``strong`` against ``weak`` (``strong`` wins about 80% of human votes); every
    comparison gets ``voters`` votes from distinct annotators over the last 30 days. Call again
    with another ``start`` to add more rows to the same project.
    """
    rng = random.Random(seed + start)
    now = timezone.now()
    User = get_user_model()
    names = [f"voter{i}" for i in range(voters)]
    existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
    User.objects.bulk_create([User(username=n) for n in names if n not in existing])
    users = list(User.objects.filter(username__in=names).order_by("username"))
    Membership.objects.bulk_create(
        [Membership(project=project, user=u, role=Membership.Role.ANNOTATOR) for u in users], ignore_conflicts=True
    )
    ckpt = {}
    for name, state in ((weak, Checkpoint.State.INCUMBENT), (strong, Checkpoint.State.CANDIDATE), ("old", Checkpoint.State.RETIRED)):
        ckpt[name], _ = Checkpoint.objects.get_or_create(project=project, name=name, defaults={"state": state})
    prompts = Prompt.objects.bulk_create([
        Prompt(project=project, messages=[{"role": "user", "content": f"Question {i}?"}],
               content_hash=messages_hash([{"role": "user", "content": f"Question {i}?"}]))
        for i in range(start, start + comparisons)
    ])
    pairs = []
    for index, prompt in enumerate(prompts):
        battle = index % 2 == 0
        first, second = (ckpt[strong], ckpt[weak]) if battle else (ckpt[weak], ckpt["old"])
        pairs.append((prompt, first, second, battle))
    # Words the tiny test tokenizer knows, so a reward model trained on these votes can learn something.
    quality = {strong: "very good", weak: "good", "old": "bad"}
    texts = [(prompt, c, f"{quality[c.name]} {c.name} {prompt.pk}") for prompt, first, second, _ in pairs
             for c in (first, second)]
    completions = Completion.objects.bulk_create([
        Completion(prompt=prompt, checkpoint=c, text=text, text_hash=text_hash(text)) for prompt, c, text in texts
    ])
    reasons = [Comparison.Reason.RANDOM, Comparison.Reason.GOLD, Comparison.Reason.ACTIVE]
    comparison_rows = []
    for index, (prompt, _, _, battle) in enumerate(pairs):
        a, b = completions[2 * index], completions[2 * index + 1]
        if rng.random() < 0.5:
            a, b = b, a
        comparison_rows.append(Comparison(
            project=project, prompt=prompt, completion_a=a, completion_b=b,
            reason=Comparison.Reason.BATTLE if battle else reasons[index % 3],
            state=Comparison.State.CLOSED if index % 5 else Comparison.State.OPEN,
            vote_count=voters if index % 5 else 0,
        ))
    created = Comparison.objects.bulk_create(comparison_rows)
    votes = []
    for index, comparison in enumerate(created):
        if not index % 5:
            continue
        better = pairs[index][1]  # the first checkpoint of each pair is the better one
        better_side = "a" if comparison.completion_a.checkpoint_id == better.pk else "b"
        for user in users:
            roll = rng.random()
            choice = better_side if roll < 0.7 else ({"a": "b", "b": "a"}[better_side] if roll < 0.9 else "tie")
            votes.append(Vote(
                comparison=comparison, annotator=user, choice=choice,
                winner=comparison.completion_a if choice == "a" else comparison.completion_b if choice == "b" else None,
                time_spent_ms=rng.randint(2000, 30000), created_at=now - timedelta(days=rng.randint(0, 29)),
            ))
    Vote.objects.bulk_create(votes, batch_size=2000)
    snapshots = Snapshot.objects.bulk_create([
        Snapshot(project=project, uri=f"file:///nonexistent/{start}-{i}.jsonl", count=100 * (i + 1),
                 votes=200 * (i + 1), sha256=hashlib.sha256(f"{start}-{i}".encode()).hexdigest())
        for i in range(3)
    ])
    version0 = RewardModel.objects.filter(project=project).count()
    models = RewardModel.objects.bulk_create([
        RewardModel(project=project, version=version0 + i + 1, backbone="tiny", snapshot=s, votes=s.votes, pairs=s.count,
                    metrics={"eval_accuracy": 0.6 + 0.03 * i, "eval_pairs": 40.0, "eval_ece": 0.05, "eval_loss": 0.6},
                    artifact_uri="file:///nonexistent")
        for i, s in enumerate(snapshots)
    ])
    kinds, states = list(Kind.values), list(State.values)
    run_rows = []
    for i in range(runs):
        kind, state = kinds[i % 4], states[i % 5]
        queued, done = state == State.QUEUED, state in TrainingRun.FINISHED
        begun = now - timedelta(minutes=5 + 7 * (runs - i))
        run_rows.append(TrainingRun(
            project=project, kind=kind, state=state, reason=f"seeded run {start + i}",
            progress=0.0 if queued else 1.0 if state == State.SUCCEEDED else (i % 10) / 10,
            config={"epochs": 1}, snapshot=snapshots[i % 3], checkpoint_in=ckpt[weak],
            started_at=None if queued else begun, heartbeat_at=None if queued else now, worker="" if queued else "gpu-1",
            finished_at=begun + timedelta(seconds=40 + i % 7 * 30) if done else None,
        ))
    made = TrainingRun.objects.bulk_create(run_rows)
    RunStep.objects.bulk_create([RunStep(run=made[0], step=s, metrics={"loss": 1 / (s + 1), "accuracy": 0.5}) for s in range(1, 50)])
    return {"checkpoints": ckpt, "runs": made, "snapshots": snapshots, "reward_models": models, "users": users}


@pytest.fixture
def seeded(project):
    return seed_project(project)


def page_urls(project, data) -> dict[str, str]:
    run = data["runs"][0]
    return {
        "dashboard": reverse("console-dashboard", args=[project.slug]),
        "runs": reverse("console-runs", args=[project.slug]),
        "runs filtered": reverse("console-runs", args=[project.slug]) + "?kind=dpo&state=failed",
        "run new": reverse("console-run-new", args=[project.slug]),
        "run new generation": reverse("console-run-new", args=[project.slug]) + "?kind=generation",
        "run detail": reverse("console-run", args=[project.slug, run.pk]),
        "reward models": reverse("console-reward-models", args=[project.slug]),
        "leaderboard": reverse("console-leaderboard", args=[project.slug]),
        "reward hacking": reverse("console-guard", args=[project.slug]),
        "loop": reverse("console-loop", args=[project.slug]),
        "datasets": reverse("console-datasets", args=[project.slug]),
        "annotators": reverse("console-annotators", args=[project.slug]),
        "annotators all": reverse("console-annotators", args=[project.slug]) + "?sources=all",
    }


def action_urls(project, data) -> dict[str, str]:
    run = data["runs"][0]
    return {
        "cancel": reverse("console-run-cancel", args=[project.slug, run.pk]),
        "retry": reverse("console-run-retry", args=[project.slug, run.pk]),
        "promote": reverse("console-promote", args=[project.slug, data["checkpoints"]["cand"].pk]),
        "freeze": reverse("console-freeze", args=[project.slug]),
        "start": reverse("console-run-new", args=[project.slug]),
        "download": reverse("console-snapshot-download", args=[project.slug, data["snapshots"][0].pk]),
    }


def test_every_console_page_renders_for_a_manager(client, project, manager, seeded):
    client.force_login(manager)
    for name, url in page_urls(project, seeded).items():
        response = client.get(url)
        assert response.status_code == 200, name
        charted = name in ("dashboard", "run detail", "reward models", "leaderboard", "reward hacking", "annotators",
                           "annotators all")
        assert (b'<svg class="chart"' in response.content) == charted, name


def test_annotators_and_strangers_reach_no_console_page_or_action(client, project, annotator, outsider, seeded):
    pages, actions = page_urls(project, seeded), action_urls(project, seeded)
    for name, url in {**pages, **actions}.items():
        client.logout()
        assert client.get(url).status_code == 302 and client.post(url).status_code == 302, name  # to the login page
        client.force_login(annotator)
        assert client.post(url).status_code == 403, name
        assert client.get(url).status_code == (403 if name in pages or name in ("start", "download") else 405), name
        client.force_login(outsider)
        assert client.post(url).status_code == 404, name
    assert TrainingRun.objects.filter(project=project).count() == len(seeded["runs"])  # nothing was started
    assert Snapshot.objects.filter(project=project).count() == len(seeded["snapshots"])
    assert Checkpoint.objects.get(project=project, name="cand").state == Checkpoint.State.CANDIDATE


def test_annotators_reach_none_of_the_run_and_reward_model_apis(client, project, annotator, seeded):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    run = seeded["runs"][0]
    assert client.get(reverse("api-run", args=[run.pk]), **headers).status_code == 403
    assert client.post(reverse("api-run-cancel", args=[run.pk]), **headers).status_code == 403
    assert client.get(reverse("api-reward-models", args=[project.slug]), **headers).status_code == 403
    assert client.post(reverse("api-rm-train", args=[project.slug]), data="{}", content_type="application/json",
                       **headers).status_code == 403


def test_actions_need_post(client, project, manager, seeded):
    client.force_login(manager)
    for name in ("cancel", "retry", "promote", "freeze"):
        assert client.get(action_urls(project, seeded)[name]).status_code == 405, name


def _queries(client, url) -> int:
    with CaptureQueriesContext(connection) as context:
        assert client.get(url).status_code == 200
    return len(context.captured_queries)


def test_pages_cost_the_same_few_queries_however_many_votes_and_runs(client, project, manager, seeded):
    """2,000 votes and 200 runs (after the second seeding) cost no more queries than 640 votes and 50 runs."""
    client.force_login(manager)
    urls = page_urls(project, seeded)
    for url in urls.values():
        client.get(url)  # first visits create per-project rows (loop settings)
    before = {name: _queries(client, url) for name, url in urls.items()}
    seed_project(project, comparisons=425, runs=150, start=1000)
    assert Vote.objects.filter(comparison__project=project).count() == 2000
    assert TrainingRun.objects.filter(project=project).count() == 200
    after = {name: _queries(client, url) for name, url in urls.items()}
    assert after == before
    assert max(after.values()) <= 20, after  # the dashboard is the most: 16 today


def test_dashboard_shows_the_flywheel_at_a_glance(client, project, manager, seeded):
    client.force_login(manager)
    stale = seeded["runs"][1]  # running
    TrainingRun.objects.filter(pk=stale.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    html = client.get(reverse("console-dashboard", args=[project.slug])).content.decode()
    assert 'data-kpi="votes-today"' in html and "Votes per day" in html
    assert 'data-kpi="incumbent"' in html and ">base<" in html
    assert 'data-reason="checkpoint battle"' in html
    first = seeded["runs"][0]  # the oldest active run: what the loop is busy with
    assert f"<p data-loop>reward model run {first.pk} is queued: seeded run 0.</p>" in html
    assert "v3</a> held-out accuracy" in html and "66%" in html
    stale.refresh_from_db()
    assert stale.state == State.QUEUED and stale.attempt == 2  # found lost on load: it starts again
    assert "attempt 1 lost: its worker process" in stale.log_tail and "stopped reporting" in stale.log_tail


def test_runs_filter_by_kind_and_state_and_page(client, project, manager, seeded):
    client.force_login(manager)
    url = reverse("console-runs", args=[project.slug])
    html = client.get(url + "?kind=dpo").content.decode()
    shown = {int(x) for x in __import__("re").findall(r'data-run="(\d+)"', html)}
    assert shown == set(TrainingRun.objects.filter(project=project, kind="dpo").values_list("pk", flat=True)[:50])
    html = client.get(url + "?kind=ppo&state=succeeded").content.decode()
    expected = TrainingRun.objects.filter(project=project, kind="ppo", state="succeeded").count()
    assert html.count('data-run="') == expected
    assert client.get(url + "?kind=nonsense").status_code == 200  # a bad filter shows everything


def test_runs_table_polls_only_while_something_runs(client, project, manager, seeded):
    client.force_login(manager)
    url = reverse("console-runs", args=[project.slug])
    assert 'hx-trigger="every 2s"' in client.get(url).content.decode()
    response = client.get(url + "?state=succeeded", HTTP_HX_REQUEST="true")
    assert response.status_code == 286 and b'id="runs-table"' in response.content
    assert client.get(url + "?state=running", HTTP_HX_REQUEST="true").status_code == 200
