"""Console pages at the scale the issue names: 100,000 votes and 1,000 runs."""
from __future__ import annotations

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotate.models import Vote
from tests.training.test_console import page_urls, seed_project
from training.models import TrainingRun

pytestmark = pytest.mark.slow
PAGE_BUDGET_S = 3.0  # generous: a shared two-core machine; typical figures are in the test's output


def test_every_page_stays_fast_with_100k_votes_and_1000_runs(client, project, manager):
    data = seed_project(project, comparisons=31250, voters=4, runs=1000)
    assert Vote.objects.filter(comparison__project=project).count() == 100_000
    assert TrainingRun.objects.filter(project=project).count() == 1000
    client.force_login(manager)
    timings = {}
    for name, url in page_urls(project, data).items():
        client.get(url)  # warm: first visits create per-project rows
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        timings[name] = (round(time.perf_counter() - started, 3), len(queries.captured_queries))
    print("\nseconds, queries per page at 100k votes / 1,000 runs:", timings)
    slow = {name: t for name, (t, _) in timings.items() if t > PAGE_BUDGET_S}
    assert not slow, timings
