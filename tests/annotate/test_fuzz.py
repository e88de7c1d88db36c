"""Generated hostile input at the JSON endpoints that store things (a vote; prompt and completion imports):
never a 500, a clear JSON error for every refusal, and nothing stored from a refused request.

Runs on SQLite in ``make test`` and again on PostgreSQL in ``.ci/run`` (which refuses NUL characters and
lone surrogates in text, where SQLite stores them)."""
from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate.models import Completion, Prompt, Vote
from annotate.tokens import token_create
from tests.conftest import make_comparisons

pytestmark = pytest.mark.django_db
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NASTY_TEXT = st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "<script>alert(1)</script>",
                              "é" * 70, "k" * 65, "9" * 400])
NUMBERS = st.sampled_from([0, 1, 2, 3, 4, -5, True, False, 1.5, 1e308, -1e308, 2**63, 1099511627776, -(2**70)])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20) | NASTY_TEXT | NUMBERS
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                         max_size=3), max_leaves=6)
NAN = st.sampled_from([float("nan"), float("inf"), float("-inf")])


def _body(value) -> str:
    return json.dumps(value, allow_nan=True)  # NaN and Infinity as a client could send them


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def voter(client, annotator, project):
    comparisons = itertools.cycle(make_comparisons(project, 300))  # a second round meets replays and full pairs
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator, name='fuzz')}"}

    def post(raw: str):
        comparison = next(comparisons)
        return client.post(f"/api/comparisons/{comparison.pk}/vote", raw, content_type="application/json", **auth)

    return post


@FUZZ
@given(body=st.fixed_dictionaries({}, optional={
    "choice": st.sampled_from(["a", "b", "tie", "both_bad"]) | JSON, "strength": NUMBERS | JSON,
    "rationale": NASTY_TEXT | JSON, "time_spent_ms": NUMBERS | JSON, "idempotency_key": NASTY_TEXT | JSON,
    "next": JSON, "extra": JSON}) | JSON | NAN)
def test_no_vote_body_gives_a_500_and_a_refused_one_stores_nothing(voter, body):
    before = Vote.objects.count()
    response = voter(_body(body))
    assert response.status_code in (200, 201, 400, 409, 413), (body, response.status_code, response.content[:300])
    if response.status_code >= 400:
        assert response["Content-Type"] == "application/json" and response.json()["error"]
        assert Vote.objects.count() == before
    else:
        assert Vote.objects.count() == before + (response.status_code == 201)


def test_a_body_nested_100000_deep_or_not_json_is_a_400(voter):
    for raw in (_deep(100_000), '{"choice": ' + _deep(50_000) + "}", "{", "\xff\xfe", '{"choice": "a"'):
        response = voter(raw)
        assert response.status_code == 400 and response.json()["error"], raw[:20]
    assert not Vote.objects.exists()


ROW_FIELDS = {"messages": JSON, "source": NASTY_TEXT | JSON, "tags": JSON,
              "checkpoint": NASTY_TEXT | JSON, "text": NASTY_TEXT | JSON,
              "sampling": JSON | st.dictionaries(st.text(max_size=4), NAN | JSON, max_size=2), "seed": NUMBERS | JSON}


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"prompt": st.sampled_from(["Hi?", "Why?"]) | NASTY_TEXT | JSON},
                                           optional=ROW_FIELDS)
                     | JSON, min_size=1, max_size=3) | JSON, kind=st.sampled_from(["prompts", "completions"]))
def test_no_import_body_gives_a_500_and_a_refused_one_stores_nothing(client, manager, project, rows, kind):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager, name='fuzz')}"}
    before = (Prompt.objects.count(), Completion.objects.count())
    response = client.post(f"/api/projects/{project.slug}/{kind}", _body(rows), content_type="application/json",
                           **auth)
    assert response.status_code in (201, 400, 413), (rows, response.status_code, response.content[:300])
    if response.status_code != 201:
        assert response.json()["error"]
        assert (Prompt.objects.count(), Completion.objects.count()) == before


KNOWN = [  # what an attacker and an operator tried: each one a 400 naming the line and field, nothing stored
    ("prompts", [{"prompt": "a\x00b"}], 'field "prompt": holds a NUL character'),
    ("prompts", [{"prompt": "a\ud800b"}], 'field "prompt": holds a lone surrogate'),
    ("prompts", [{"prompt": "ok", "source": "s\x00"}], 'field "source": holds a NUL'),
    ("prompts", [{"prompt": "ok"}, {"prompt": "ok2", "tags": ["t\x00"]}], 'line 2, field "tags[0]": holds a NUL'),
    ("prompts", [{"messages": [{"role": "user", "content": "x\x00"}]}], 'field "messages[0].content": holds a NUL'),
    ("prompts", [{"prompt": json.loads(_deep(200))}], "nested more than 20 levels deep"),
    ("completions", [{"prompt": "Hi?", "checkpoint": "m\x00", "text": "t"}], 'field "checkpoint": holds a NUL'),
    ("completions", [{"prompt": "Hi?", "checkpoint": "m", "text": "t\udfff"}], 'field "text": holds a lone'),
    ("completions", [{"prompt": "Hi?", "checkpoint": "m", "text": "t", "sampling": {"top_p": float("nan")}}],
     'field "sampling.top_p": must be a finite number'),
    ("completions", [{"prompt": "Hi?", "checkpoint": "m", "text": "t", "sampling": {"t": float("-inf")}}],
     'field "sampling.t": must be a finite number'),
    ("completions", [{"prompt": "Hi?", "checkpoint": "m", "text": "t", "sampling": {"\x00": 1}}],
     'field "sampling (a key)": holds a NUL'),
]


@pytest.mark.parametrize("kind,rows,message", KNOWN)
def test_what_no_column_can_hold_is_a_400_naming_line_and_field(client, manager, project, kind, rows, message):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager, name='known')}"}
    response = client.post(f"/api/projects/{project.slug}/{kind}", _body(rows), content_type="application/json",
                           **auth)
    assert response.status_code == 400 and message in response.json()["error"], response.content[:300]
    assert not Prompt.objects.exists() and not Completion.objects.exists()


@pytest.mark.parametrize("field,value,message", [
    ("choice", ["a"], "choice must be one of"), ("choice", {"a": 1}, "choice must be one of"),
    ("strength", True, "strength must be 1"), ("strength", [1], "strength must be 1"),
    ("time_spent_ms", -5, "time_spent_ms must be a whole number"),
    ("time_spent_ms", 1099511627776, "time_spent_ms must be a whole number"),
    ("rationale", "why\x00", "rationale holds a NUL"), ("idempotency_key", "k\x00", "idempotency_key holds a NUL"),
    ("rationale", "\ud800", "rationale holds a lone surrogate"), ("rationale", 5, "rationale must be a string"),
])
def test_each_bad_vote_field_is_a_400_naming_it(voter, field, value, message):
    response = voter(_body({"choice": "a", field: value}))
    assert response.status_code == 400 and message in response.json()["error"], response.content
    assert not Vote.objects.exists()


def test_a_preference_margin_of_1e308_imports_as_the_strongest_preference(project):
    import io

    from annotate import imports

    row = {"prompt": "Hi?", "chosen": "Hello there.", "rejected": "Go away.", "margin": 1e308}
    imports.import_preferences(project=project, stream=io.BytesIO(json.dumps(row).encode()), filename="p.jsonl")
    assert Vote.objects.get().strength == 3


@FUZZ
@given(body=st.fixed_dictionaries({"kind": st.sampled_from(["reward_model", "dpo", "ppo", "generation"]) | JSON},
                                  optional={"config": st.dictionaries(st.sampled_from(
                                      ["epochs", "batch_size", "learning_rate", "max_steps", "beta", "mode", "seed",
                                       "temperature", "world_size", "prompts", "backbone", "bogus"]), NUMBERS | NASTY_TEXT
                                      | NAN | JSON, max_size=3) | JSON,
                                      "checkpoint": NASTY_TEXT | JSON, "snapshot": NUMBERS | JSON,
                                      "reward_model": NUMBERS | JSON, "rivals": JSON, "prompts": NUMBERS | JSON,
                                      "reason": NASTY_TEXT | JSON}) | JSON | NAN)
def test_no_run_start_body_gives_a_500_and_a_refused_one_starts_nothing(client, manager, project, body):
    from training.models import TrainingRun

    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager, name='fuzz')}"}
    before = TrainingRun.objects.count()
    response = client.post(f"/api/projects/{project.slug}/runs", _body(body), content_type="application/json", **auth)
    assert response.status_code in (202, 400, 404), (body, response.status_code, response.content[:300])
    if response.status_code != 202:
        assert response.json()["error"] and TrainingRun.objects.count() == before


# --- the wider surface: skip, the reward-model alias, query parameters, file imports ------------------

FEW = settings(FUZZ, max_examples=300)


@pytest.fixture
def skipper(client, annotator, project):
    comparisons = itertools.cycle(make_comparisons(project, 50))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=annotator, name='fuzz')}"}

    def post(raw: str, query: str = "", content_type: str = "application/json"):
        comparison = next(comparisons)
        return client.post(f"/api/comparisons/{comparison.pk}/skip{query}", raw, content_type=content_type, **auth)

    return post


@FEW
@given(body=st.fixed_dictionaries({}, optional={"next": JSON, "extra": JSON}) | JSON | NAN,
       query=st.sampled_from(["", "?next=1", "?next=maybe", "?next=\x00", "?next=" + "9" * 400, "?next=%ff"]),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_no_skip_body_gives_a_500_and_a_refused_one_skips_nothing(skipper, body, query, content_type):
    from annotate.models import Lease

    before = Lease.objects.filter(skipped=True).count()
    response = skipper(_body(body), query, content_type)
    assert response.status_code in (200, 400, 413), (body, query, response.status_code, response.content[:300])
    if response.status_code != 200:
        assert response.json()["error"] and Lease.objects.filter(skipped=True).count() == before


@FEW
@given(body=st.fixed_dictionaries({}, optional={
    "config": st.dictionaries(st.sampled_from(["epochs", "batch_size", "learning_rate", "seed", "ensemble_size",
                                               "max_length", "loss", "backbone", "bogus"]),
                              NUMBERS | NASTY_TEXT | NAN | JSON, max_size=3) | JSON,
    "reason": NASTY_TEXT | JSON, "kind": JSON}) | JSON | NAN)
def test_no_reward_model_train_body_gives_a_500_and_a_refused_one_starts_nothing(client, manager, project, body):
    from training.models import TrainingRun

    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager, name='fuzz')}"}
    before = TrainingRun.objects.count()
    response = client.post(f"/api/projects/{project.slug}/reward-models/train", _body(body),
                           content_type="application/json", **auth)
    assert response.status_code in (202, 400), (body, response.status_code, response.content[:300])
    if response.status_code != 202:
        assert response.json()["error"] and TrainingRun.objects.count() == before


LISTS = ["/api/projects", "/api/projects/demo/runs", "/api/projects/demo/reward-models",
         "/api/projects/demo/checkpoints", "/api/projects/demo/leaderboard", "/api/projects/demo/snapshots",
         "/api/projects/demo/export"]
QUERY_NAMES = st.sampled_from(["limit", "offset", "kind", "state", "format", "output", "sources", "reasons", "after",
                               "before", "closed_only", "metadata", "real_names", "aggregation", "confidence", "x"])
QUERY_VALUES = st.sampled_from(["", "0", "-1", "1", "50", "1e3", "9" * 30, "NaN", "true", "maybe", "trl", "raw",
                                "parquet", "jsonl", "human", "gold", "dpo", "running", "2026-01-01T00:00:00",
                                "2026-13-45", "\x00", "\ud800", "%00", "é" * 10]) | st.text(max_size=12)


@FEW
@given(path=st.sampled_from(LISTS), query=st.lists(st.tuples(QUERY_NAMES, QUERY_VALUES), max_size=4))
def test_no_query_on_a_list_or_the_export_gives_a_500(client, manager, project, path, query):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager, name='fuzz')}"}
    votes = Vote.objects.count()
    response = client.get(path, {name: value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                                 for name, value in query} if query else {}, **auth)
    assert response.status_code in (200, 400), (path, query, response.status_code, response.content[:300])
    if response.status_code == 400:
        assert response.json()["error"]
    else:
        b"".join(response.streaming_content) if response.streaming else response.content  # the whole answer
    assert Vote.objects.count() == votes


CSV_CELLS = st.sampled_from(["", "Hi?", "Why?", "model-a", "text", '"', 'a"b', '"open', "x\x00y", "1", "-1", "NaN",
                             "1e308", "a,b", "é", "\r", "\n"]) | st.text(max_size=8)
CSV_HEADERS = st.lists(st.sampled_from(["prompt", "checkpoint", "text", "chosen", "rejected", "tags", "source", "seed",
                                        "margin", "x"]), min_size=0, max_size=5)
PREFERENCE_FIELDS = {"chosen": NASTY_TEXT | JSON, "rejected": NASTY_TEXT | JSON, "margin": NUMBERS | NAN | JSON}


def _jsonl(rows) -> bytes:
    return "\n".join(_body(row) for row in rows).encode("utf-8", "surrogatepass")


def _csv_file(header, rows) -> bytes:
    lines = [",".join(header)] + [",".join(row) for row in rows]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


FILES = st.one_of(
    st.tuples(st.just("rows.jsonl"), st.lists(st.fixed_dictionaries(
        {"prompt": st.sampled_from(["Hi?", "Why?"]) | NASTY_TEXT | JSON},
        optional={**ROW_FIELDS, **PREFERENCE_FIELDS}) | JSON, min_size=0, max_size=3).map(_jsonl)),
    st.tuples(st.just("rows.csv"), st.builds(_csv_file, CSV_HEADERS, st.lists(st.lists(CSV_CELLS, max_size=5),
                                                                              max_size=3))),
    st.tuples(st.sampled_from(["rows.jsonl", "rows.csv"]), st.binary(max_size=40)),
)


def _stored() -> tuple[int, int, int]:
    return Prompt.objects.count(), Completion.objects.count(), Vote.objects.count()


@FUZZ
@given(file=FILES, kind=st.sampled_from(["prompts", "completions", "preferences"]))
def test_no_import_file_raises_anything_but_a_refusal_and_a_refused_one_stores_nothing(project, file, kind):
    import io

    from annotate import imports
    from annotate.views_manage import IMPORTERS

    name, data = file
    before = _stored()
    try:
        IMPORTERS[kind](project=project, stream=io.BytesIO(data), filename=name)
    except imports.InvalidInput as refused:
        assert str(refused) and _stored() == before


@FEW
@given(file=FILES, kind=st.sampled_from(["prompts", "completions", "preferences"]))
def test_no_import_file_posted_to_the_import_page_gives_a_500(client, manager, project, file, kind):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(manager)
    name, data = file
    before = _stored()
    response = client.post(f"/p/{project.slug}/manage/import/", {"kind": kind, "file": SimpleUploadedFile(name, data)})
    assert response.status_code in (200, 302), (kind, data[:200], response.status_code)
    if response.status_code == 200:  # the form again, saying why: nothing stored
        assert _stored() == before
