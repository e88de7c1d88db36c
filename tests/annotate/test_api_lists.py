"""Pages of the API's lists (limit/offset, count, next) and skipping a comparison over the API."""
from __future__ import annotations

from annotate import services
from annotate.models import Lease, Membership, Snapshot, Vote
from annotate.tokens import token_create


def test_projects_come_in_pages_that_follow_next_to_the_end(client, project, annotator):
    for i in range(4):
        other = services.project_create(slug=f"p{i}", name=f"Project {i}", guidelines="")
        Membership.objects.create(project=other, user=annotator, role=Membership.Role.ANNOTATOR)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    first = client.get("/api/projects?limit=2", **auth).json()
    assert (first["count"], first["limit"], first["offset"]) == (5, 2, 0)
    seen, body = [p["slug"] for p in first["projects"]], first
    while body["next"]:
        body = client.get(body["next"], **auth).json()
        seen += [p["slug"] for p in body["projects"]]
    assert seen == ["demo", "p0", "p1", "p2", "p3"]  # by name, each once
    assert body["offset"] == 4 and len(body["projects"]) == 1
    whole = client.get("/api/projects", **auth).json()
    assert whole["limit"] == 50 and whole["next"] is None and len(whole["projects"]) == 5


def test_snapshots_are_listed_newest_first_for_managers(client, project, manager, annotator):
    for n in range(3):
        Snapshot.objects.create(project=project, uri=f"file:///s{n}", count=n, votes=n, sha256=f"{n}" * 64)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager)}"}
    body = client.get("/api/projects/demo/snapshots?limit=2", **auth).json()
    assert [s["uri"] for s in body["snapshots"]] == ["file:///s2", "file:///s1"] and body["count"] == 3
    assert set(body["snapshots"][0]) == {"id", "format", "count", "votes", "sha256", "uri", "filters", "created_at"}
    annotating = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator)}"}
    assert client.get("/api/projects/demo/snapshots", **annotating).status_code == 403


def test_a_skipped_comparison_frees_its_lease_and_is_never_offered_again(api, project, comparisons):
    pair = api("get", "/api/projects/demo/comparisons/next").json()
    skipped = api("post", f"/api/comparisons/{pair['id']}/skip")
    assert skipped.status_code == 200 and skipped.json() == {"comparison": pair["id"], "skipped": True}
    lease = Lease.objects.get(comparison_id=pair["id"])
    assert lease.skipped
    offered = []
    while (following := api("get", "/api/projects/demo/comparisons/next")).status_code == 200:
        offered.append(following.json()["id"])
        assert api("post", f"/api/comparisons/{offered[-1]}/vote", {"choice": "a"}).status_code == 201
    assert pair["id"] not in offered and len(offered) == len(comparisons) - 1
    assert not Vote.objects.filter(comparison_id=pair["id"]).exists()


def test_skip_with_next_hands_over_another_pair_in_the_same_answer(api, project, comparisons):
    pair = api("get", "/api/projects/demo/comparisons/next").json()
    body = api("post", f"/api/comparisons/{pair['id']}/skip", {"next": True}).json()
    assert body["skipped"] is True and body["next"]["id"] != pair["id"]
    assert api("get", "/api/projects/demo/comparisons/next").json()["id"] == body["next"]["id"]  # reserved
    flagged = api("post", f"/api/comparisons/{body['next']['id']}/skip?next=1").json()
    assert flagged["next"]["id"] not in (pair["id"], body["next"]["id"])


def test_only_members_skip_and_a_missing_comparison_is_404(client, project, comparisons, outsider, api):
    strange = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=outsider)}"}
    assert client.post(f"/api/comparisons/{comparisons[0].pk}/skip", **strange).status_code == 404
    assert client.post(f"/api/comparisons/{comparisons[0].pk}/skip").status_code == 401
    assert api("post", "/api/comparisons/999999/skip").status_code == 404
    assert not Lease.objects.exists()
