"""Console datasets (freeze, downloads in every format) and the SVG charts every console page uses."""
from __future__ import annotations

import hashlib
import json

import pytest
from django.urls import reverse

from annotate.exports import FORMATS, export_rows
from annotate.models import Snapshot
from annotate.snapshots import snapshot_freeze, snapshot_path
from annotate.votes import vote_record
from tests.conftest import make_comparisons
from training.console import charts


@pytest.fixture
def voted(project, annotator, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    comparisons = make_comparisons(project, 6, texts=("Answer **one**", "Answer two"))
    for comparison, (choice, strength) in zip(comparisons, [("a", 2), ("b", 3), ("tie", None), ("a", None), ("both_bad", None), ("b", 1)], strict=True):
        vote_record(annotator=annotator, comparison_id=comparison.pk, choice=choice, strength=strength)
    return comparisons


def _lines(content: bytes) -> list[dict]:
    return [json.loads(line) for line in content.decode().splitlines() if line.strip()]


def test_freezing_from_the_page_records_the_filters(client, project, manager, voted):
    client.force_login(manager)
    response = client.post(reverse("console-freeze", args=[project.slug]),
                           {"note": "before the rubric change", "sources": ["human"]}, follow=True)
    snapshot = Snapshot.objects.get(project=project)
    assert f"Snapshot {snapshot.pk} frozen: {snapshot.count} pairs from 6 votes." in response.content.decode()
    assert snapshot.filters == {"sources": ["human"], "note": "before the rubric change", "for": "console, manager"}
    bad = client.post(reverse("console-freeze", args=[project.slug]), {"sources": ["telepathy"]}, follow=True)
    assert "Nothing was frozen" in bad.content.decode() and Snapshot.objects.count() == 1


def test_a_snapshot_downloads_in_every_export_format(client, project, manager, voted):
    snapshot = snapshot_freeze(project=project)
    client.force_login(manager)
    page = client.get(reverse("console-datasets", args=[project.slug])).content.decode()
    assert snapshot.sha256 in page
    url = reverse("console-snapshot-download", args=[project.slug, snapshot.pk])
    for fmt in FORMATS:
        assert f'{url}?format={fmt}"' in page
        response = client.get(url, {"format": fmt})
        assert response.status_code == 200, fmt
        assert f"demo-snapshot-{snapshot.pk}-{fmt}.jsonl" in response["Content-Disposition"]
        content = b"".join(response.streaming_content)
        if fmt == "pairs":  # the frozen file itself, byte for byte
            assert hashlib.sha256(content).hexdigest() == snapshot.sha256
            assert content == snapshot_path(snapshot).read_bytes()
        # Derived from the file, each format equals the export of the same votes from the database.
        assert _lines(content) == list(export_rows(project=project, fmt=fmt)), fmt


def test_bad_formats_and_missing_files_are_told_apart(client, project, manager, voted):
    snapshot = snapshot_freeze(project=project)
    client.force_login(manager)
    url = reverse("console-snapshot-download", args=[project.slug, snapshot.pk])
    assert client.get(url, {"format": "csv"}).status_code == 400
    path = snapshot_path(snapshot)
    path.chmod(0o644)
    path.unlink()
    assert client.get(url, {"format": "trl"}).status_code == 410


HOSTILE = '<script>alert("x")</script>&'


def test_charts_escape_every_label():
    rendered = [
        charts.line_chart([charts.Series(HOSTILE, [(1, 0.5), (2, 0.7)])], title=HOSTILE, x_label=HOSTILE,
                          y_label=HOSTILE, hlines=[charts.HLine(0.6, HOSTILE)], bands=[charts.Band(0.5, 0.6, HOSTILE)]),
        charts.bar_chart([(HOSTILE, 3.0)], title=HOSTILE, hlines=[charts.HLine(1, HOSTILE)]),
        charts.heatmap([HOSTILE, "b"], [[None, 0.7], [0.3, None]], counts=[[0, 10], [10, 0]], title=HOSTILE),
        charts.interval_chart([(HOSTILE, 1000, 950, 1050)], title=HOSTILE, highlight=HOSTILE),
        charts.line_chart([], title=HOSTILE, empty=HOSTILE),
    ]
    for svg in rendered:
        assert svg.startswith('<svg class="chart"') and svg.endswith("</svg>")
        assert "<script>" not in svg and "&lt;script&gt;" in svg
        assert "&amp;" in svg and " & " not in svg


def test_charts_draw_what_they_are_given():
    svg = charts.line_chart([charts.Series("acc", [(100, 0.6), (200, 0.7)], dots=True)], title="t", percent=True,
                            hlines=[charts.HLine(0.75, "ceiling")], y_min=0.4, y_max=1.0)
    assert svg.count("<circle") == 2 and "ceiling" in svg and "100%" in svg and "40%" in svg
    bars = charts.bar_chart([("a", 1), ("b", 2), ("c", 0)], title="t")
    assert bars.count("<rect") == 3
    grid = charts.heatmap(["x", "y"], [[None, 0.9], [0.1, None]], title="t")
    assert grid.count(">90%<") == 1 and grid.count(">10%<") == 1 and grid.count('fill="#f2f4f7"') == 2
    long = charts.line_chart([charts.Series("s", [(i, i) for i in range(5000)])], title="t")
    assert long.count(",") < 2 * charts.MAX_POINTS + 50  # thinned


def test_nice_ticks_are_round_and_cover_the_range():
    assert charts.nice_ticks(0, 1, 4) == [0, 0.25, 0.5, 0.75, 1.0]
    ticks = charts.nice_ticks(812, 1437, 5)
    assert ticks[0] <= 812 and ticks[-1] >= 1437 and all(t % 100 == 0 for t in ticks)
