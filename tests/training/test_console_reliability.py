"""The Annotators page with the reliability model: each person's competence, and a button that fits now."""
from __future__ import annotations

import random

from django.urls import reverse

from annotate import services
from annotate.models import Membership, ReliabilityFit
from annotate.votes import vote_record
from tests.conftest import PASSWORD, make_comparisons


def test_a_manager_fits_the_model_and_sees_who_clicks_left(client, project, manager, annotator, eager):
    people = [services.user_with_role(project=project, username=name, password=PASSWORD,
                                      role=Membership.Role.ANNOTATOR) for name in ("ann", "bob", "lefty")]
    project.votes_per_comparison = 3
    project.save()
    rng = random.Random(0)
    for comparison in make_comparisons(project, 30):
        better = rng.choice("ab")
        for person in people:
            vote_record(annotator=person, comparison_id=comparison.pk,
                        choice="a" if person.username == "lefty" else better)
    client.force_login(manager)
    page = reverse("console-annotators", args=[project.slug])
    assert "no fit yet" in client.get(page).content.decode()

    assert client.post(reverse("console-annotators-fit", args=[project.slug])).status_code == 302
    assert ReliabilityFit.objects.filter(project=project).count() == 1

    html = client.get(page + "?sort=competence").content.decode()
    assert html.index('data-annotator="lefty"') < html.index('data-annotator="ann"')  # least competent first
    row = html[html.index('data-annotator="lefty"'):]
    row = row[:row.index("</tr>")]
    assert "left 0.4" in row or "left 0.5" in row


def test_an_annotator_cannot_start_a_fit(client, project, annotator):
    client.force_login(annotator)
    response = client.post(reverse("console-annotators-fit", args=[project.slug]))
    assert response.status_code in (403, 404)
    assert not ReliabilityFit.objects.exists()
