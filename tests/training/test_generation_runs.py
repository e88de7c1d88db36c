"""Generation runs and simulated annotators from the Django side."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import torch
from django.core.management import call_command

from annotate import services
from annotate.models import Comparison, Completion, Vote
from tests.conftest import make_comparisons
from tests.tiny import save_tiny_llama
from training.generation import generation_job, generation_start
from training.lib.oracles import parse_oracle, parse_verdict
from training.runs import run_execute
from training.simulate import simulate_votes

ROOT = Path(__file__).resolve().parents[2]


def test_generation_samples_candidate_and_incumbent_and_queues_battles(project, tmp_path):
    new, old = save_tiny_llama(tmp_path / "new", chat=True, seed=1), save_tiny_llama(tmp_path / "old", chat=True)
    candidate = services.checkpoint_get_or_create(project=project, name="cand", uri=str(new))
    incumbent = services.checkpoint_get_or_create(project=project, name="inc", uri=new.as_uri().replace(str(new), str(old)),
                                                  state="incumbent")
    for i in range(4):
        services.prompt_get_or_create(project=project, messages=f"Tell me about topic {i}")
    run = generation_start(project=project, checkpoints=[candidate, incumbent],
                           config={"prompts": 3, "max_new_tokens": 8, "temperature": 1.0}, enqueue=False)
    run = run_execute(run.pk, generation_job)
    run.refresh_from_db()
    assert run.state == "succeeded", run.error
    assert Completion.objects.filter(checkpoint=candidate).count() == 3
    battles = Comparison.objects.filter(project=project, reason="battle")
    assert run.outputs["comparisons"] == battles.count() > 0
    assert all(c.priority == 10 for c in battles)
    assert {battles[0].completion_a.checkpoint_id, battles[0].completion_b.checkpoint_id} == {candidate.pk, incumbent.pk}


def test_a_generation_process_presumed_lost_adds_no_completion_and_no_battle(project, tmp_path):
    from training.models import TrainingRun

    new, old = save_tiny_llama(tmp_path / "new", chat=True, seed=1), save_tiny_llama(tmp_path / "old", chat=True)
    candidate = services.checkpoint_get_or_create(project=project, name="cand", uri=str(new))
    incumbent = services.checkpoint_get_or_create(project=project, name="inc", uri=str(old), state="incumbent")
    for i in range(3):
        services.prompt_get_or_create(project=project, messages=f"Tell me about topic {i}")
    run = generation_start(project=project, checkpoints=[candidate, incumbent],
                           config={"prompts": 3, "max_new_tokens": 4}, enqueue=False)

    def presumed_lost_meanwhile(run, reporter):  # a reaper queued attempt 2 while this one sampled
        TrainingRun.objects.filter(pk=run.pk).update(state=TrainingRun.State.QUEUED, attempt=2)
        generation_job(run, reporter)

    assert run_execute(run.pk, presumed_lost_meanwhile) is None
    assert not Completion.objects.exists() and not Comparison.objects.filter(reason="battle").exists()


def test_generation_through_an_openai_compatible_endpoint(project, chat_server, monkeypatch):
    base_url, calls = chat_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    served = services.checkpoint_get_or_create(project=project, name="served", endpoint_url=base_url,
                                               endpoint_model="m")
    services.prompt_get_or_create(project=project, messages="Hello there")
    run = generation_start(project=project, checkpoints=[served], config={"prompts": None}, enqueue=False)
    run_execute(run.pk, generation_job)
    completion = Completion.objects.get(checkpoint=served)
    assert completion.text.startswith("Echo: Hello there")
    assert calls[-1][0] == "/v1/chat/completions" and calls[-1][2] == "Bearer sk-test"
    assert len(calls) == 2  # one 503, retried once


def test_rule_oracles():
    judge = parse_oracle("length:short").judge
    assert judge([[]] * 2, ["tiny", "a much longer answer"], ["a longer answer", "x"]) == ["a", "b"]
    assert parse_oracle("contains:please").judge([[]], ["no"], ["Please do"]) == ["b"]
    assert parse_oracle("regex:\\d+").judge([[]], ["7 days"], ["a week"]) == ["a"]
    assert parse_verdict(" b.") == "b" and parse_verdict("TIE") == "tie" and parse_verdict("[[A]]") == "a"
    # Anything else is no verdict at all, never a tie: not even a reply that happens to contain "a".
    assert {parse_verdict(r) for r in ("hmm", "A is a bit better than B", "", "both")} == {"unparseable"}
    with pytest.raises(ValueError, match="unknown oracle"):
        parse_oracle("vibes")


def test_simulated_annotators_vote_through_the_queue(project):
    project.votes_per_comparison = 2
    project.save()
    make_comparisons(project, 6, texts=("short", "a much longer answer"))
    result = simulate_votes(project=project, votes=4, oracle=parse_oracle("length:short"))
    assert result.votes == 4
    votes = Vote.objects.filter(annotator__username=result.annotator)
    assert votes.count() == 4 and set(votes.values_list("source", flat=True)) == {"simulated"}
    assert all(v.winner.text.startswith("short") for v in votes)
    out = StringIO()
    call_command("simulate_annotators", "--project", "demo", "--votes", "10", "--oracle", "length:long",
                 "--noise", "0.2", stdout=out)
    assert "cast 6 votes" in out.getvalue() and "queue ran out" in out.getvalue()


def test_llm_judge_votes_are_marked_as_ai(project, chat_server):
    base_url, calls = chat_server
    comparisons = make_comparisons(project, 2, texts=("a long detailed answer", "short"))
    # The test server replies "B" when answer B is "short" (anything else reads as a tie), so put
    # "short" at B in every comparison: each verdict is then known to be B, the short answer.
    short_answers = {}
    for comparison in comparisons:
        a, b = comparison.completion_a, comparison.completion_b
        if a.text.startswith("short"):
            a, b = b, a
        Comparison.objects.filter(pk=comparison.pk).update(completion_a=a, completion_b=b)
        short_answers[comparison.pk] = b
    oracle = parse_oracle(f"judge:{base_url}#judge-model")
    result = simulate_votes(project=project, votes=2, oracle=oracle)
    assert result.votes == 2 and result.ties == 0
    votes = list(Vote.objects.filter(annotator__username=result.annotator))
    assert sorted(v.comparison_id for v in votes) == sorted(short_answers)
    for vote in votes:
        assert vote.source == Vote.Source.AI
        assert vote.choice == Vote.Choice.B
        assert vote.winner == short_answers[vote.comparison_id]
    judged = [body for path, body, _ in calls if path.endswith("/chat/completions")]
    assert judged and all(body["model"] == "judge-model" for body in judged)


def test_managers_start_each_stage_by_hand_through_the_api(client, project, manager, tmp_path):
    from annotate.tokens import token_create
    from training.models import TrainingRun

    policy = save_tiny_llama(tmp_path / "p", chat=True)
    services.checkpoint_get_or_create(project=project, name="base", uri=str(policy), state="incumbent")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_create(user=manager)}", "content_type": "application/json"}
    url = "/api/projects/demo/runs"
    r = client.post(url, data=json.dumps({"kind": "ppo"}), **auth)
    assert r.status_code == 400 and "no reward model" in r.json()["error"]
    r = client.post(url, data=json.dumps({"kind": "dpo", "config": {"bta": 1}}), **auth)
    assert r.status_code == 400 and "bta" in r.json()["error"]
    r = client.post(url, data=json.dumps({"kind": "dpo"}), **auth)
    assert r.status_code == 400 and "no votes" in r.json()["error"]
    assert not project.snapshots.exists()  # nothing half-made
    r = client.post(url, data=json.dumps({"kind": "generation", "checkpoint": "base", "prompts": 4,
                                          "config": {"max_new_tokens": 8}}), **auth)
    assert r.status_code == 202, r.json()
    run = TrainingRun.objects.get(pk=r.json()["id"])
    assert run.kind == "generation" and run.config["checkpoints"] == [run.checkpoint_in_id]
    assert client.post(url, data=json.dumps({"kind": "nope"}), **auth).status_code == 400


def _battle_run(project, tmp_path, *, fails: type[Exception] | None = None):
    model = save_tiny_llama(tmp_path / "cand", chat=True)
    candidate = services.checkpoint_get_or_create(project=project, name="cand", uri=str(model))
    services.prompt_get_or_create(project=project, messages="Tell me about the sea")
    run = generation_start(project=project, checkpoints=[candidate], config={"max_new_tokens": 4}, enqueue=False)
    if fails is None:
        run_execute(run.pk, generation_job)
    else:
        with pytest.raises(fails):  # recorded on the run, then re-raised for the worker
            run_execute(run.pk, generation_job)
    run.refresh_from_db()
    return run


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' picks the GPU here")
@pytest.mark.parametrize(
    ("device", "dtype", "used"),
    [("auto", "auto", "cpu in float32"), ("cpu", "bfloat16", "cpu in bfloat16")],
)
def test_a_generation_run_samples_on_the_workers_device_and_dtype(project, tmp_path, settings, device, dtype, used):
    settings.WORKER_DEVICE, settings.WORKER_DTYPE = device, dtype
    run = _battle_run(project, tmp_path)
    assert run.state == "succeeded", run.error
    assert f"cand: sampling on {used}" in run.log_tail.splitlines()
    sampling = Completion.objects.get(checkpoint__name="cand").sampling
    assert "device" not in sampling and "dtype" not in sampling and sampling["max_new_tokens"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_worker_told_to_use_a_gpu_it_lacks_fails_the_run_saying_so(project, tmp_path, settings):
    settings.WORKER_DEVICE = "cuda"
    run = _battle_run(project, tmp_path, fails=ValueError)
    assert run.state == "failed"
    assert "device='cuda', but this process sees 0 CUDA GPU(s)" in run.error
    assert not Completion.objects.exists()


SHOW_WORKER = "import django; django.setup(); from django.conf import settings as s; print(s.WORKER_DEVICE, s.WORKER_DTYPE)"


def _start(tmp_path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("WORKER_DEVICE", "WORKER_DTYPE")}
    return subprocess.run([sys.executable, "-c", SHOW_WORKER], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=base | {"DJANGO_SETTINGS_MODULE": "config.settings", "FLYWHEEL_VAR_DIR": str(tmp_path)} | env)


def test_worker_settings_read_the_environment_and_refuse_what_they_cannot_read(tmp_path):
    assert _start(tmp_path).stdout.split() == ["auto", "auto"]
    assert _start(tmp_path, WORKER_DEVICE=" CUDA:1 ", WORKER_DTYPE="bfloat16").stdout.split() == ["cuda:1", "bfloat16"]
    for name, bad in (("WORKER_DEVICE", "gpu"), ("WORKER_DEVICE", "cuda:x"), ("WORKER_DTYPE", "fp8")):
        result = _start(tmp_path, **{name: bad})
        assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr, result.stderr
        message = result.stderr.strip().splitlines()[-1]
        assert f"{name}={bad!r} is not valid: use " in message, message


def test_the_judge_votes_only_when_both_orders_agree(project, judge_server):
    make_comparisons(project, 6, texts=("a long detailed answer", "short"))
    # A position-biased judge: always "A", whichever answer is first. Swapping the answers exposes it.
    biased = simulate_votes(project=project, votes=6, oracle=parse_oracle(f"judge:{judge_server(lambda m: 'A')}#j"))
    assert (biased.votes, biased.disagreed, biased.unparseable) == (0, 6, 0)
    assert not Vote.objects.exists()
    # A judge that reads: the short answer, wherever it stands. Both orders agree on every pair.
    def reads(message):
        return "A" if "Answer A:\nshort" in message else "B"
    fair = simulate_votes(project=project, votes=6, oracle=parse_oracle(f"judge:{judge_server(reads)}#fair"),
                          username="fair-judge")
    assert (fair.votes, fair.disagreed, fair.unparseable) == (6, 0, 0)
    assert all(v.winner.text.startswith("short") and v.source == "ai" for v in Vote.objects.all())


def test_an_unreadable_judge_reply_is_no_vote_and_is_counted(project, judge_server):
    make_comparisons(project, 3)
    out = StringIO()
    url = judge_server(lambda m: "I think the first one, probably.")
    call_command("simulate_annotators", "--project", "demo", "--votes", "3", "--oracle", f"judge:{url}#x", stdout=out)
    assert not Vote.objects.exists()
    assert "cast 0 votes" in out.getvalue() and "3 whose reply was not A, B or TIE" in out.getvalue()
