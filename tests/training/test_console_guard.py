"""The console's reward-hacking panel: proxy reward against people's verdict, KL, canary accuracy."""
from __future__ import annotations

from django.urls import reverse

from annotate import services
from annotate.models import Checkpoint, Snapshot
from rewardmodel.models import RewardModel
from tests.training.test_console_leaderboard import battles
from tests.training.test_guard_flag import guard


def _hacked(project):
    base = services.checkpoint_get_or_create(project=project, name="base", state=Checkpoint.State.INCUMBENT)
    cand = services.checkpoint_get_or_create(project=project, name="sycophant <b>", parent=base)
    guard(base, 0.1)
    guard(cand, 2.5)
    for checkpoint, kl in ((base, 0.0), (cand, 7.25)):
        checkpoint.meta["guard"].update(kl_from_base=kl, base_name="base", reward_model_version=3, samples=16)
        checkpoint.save(update_fields=["meta"])
    battles(project, cand, base, ["b"] * 8 + ["a"] * 2)
    snapshot = Snapshot.objects.create(project=project, uri="file:///s", count=1, votes=1, sha256="0" * 64)
    RewardModel.objects.create(project=project, version=3, backbone="b", snapshot=snapshot, artifact_uri="file:///r",
                               metrics={"eval_accuracy": 0.7, "canary_accuracy": 0.625, "canary_pairs": 8,
                                        "canary_ties": 1})
    return base, cand


def test_the_panel_marks_the_flagged_checkpoint_with_its_sentence_and_draws_the_charts(client, project, manager):
    base, cand = _hacked(project)
    client.force_login(manager)
    html = client.get(reverse("console-guard", args=[project.slug])).content.decode()
    assert "Proxy reward against human win rate" in html and html.count('<svg class="chart"') == 3
    assert "data-marked" in html  # the flagged point on the chart
    assert f'id="guard-{cand.pk}" data-checkpoint="sycophant &lt;b&gt;" data-flagged' in html
    assert "sycophant <b>" not in html  # a name is escaped everywhere, charts included
    assert "won 20% of 10 battle votes" in html and "Possible reward hacking" in html
    assert f'id="guard-{base.pk}" data-checkpoint="base">' in html  # not flagged
    assert "7.250" in html and "62%" in html  # KL and canary accuracy (widthratio rounds 62.5 down)
    nav = client.get(reverse("console-dashboard", args=[project.slug])).content.decode()
    assert reverse("console-guard", args=[project.slug]) in nav


def test_the_panel_is_refused_to_annotators_and_strangers(client, project, annotator, outsider):
    _hacked(project)
    url = reverse("console-guard", args=[project.slug])
    assert client.get(url).status_code == 302
    client.force_login(annotator)
    assert client.get(url).status_code == 403
    client.force_login(outsider)
    assert client.get(url).status_code == 404


def test_an_empty_project_renders_the_panel(client, project, manager):
    client.force_login(manager)
    html = client.get(reverse("console-guard", args=[project.slug])).content.decode()
    assert "No checkpoint measured or battled yet" in html and "No reward model yet" in html
