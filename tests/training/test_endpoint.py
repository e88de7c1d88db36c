"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1: Retry-After is obeyed
(seconds and HTTP dates, capped), n samples come from one request, 5xx is retried and 4xx is not."""
from __future__ import annotations

import email.utils
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from training.lib.endpoint import (
    EndpointConfig,
    EndpointError,
    chat_once,
    chat_samples,
    generate_endpoint,
    retry_after_s,
)

HELLO = [{"role": "user", "content": "hello"}]


def ok(n_texts: list[str], tokens: int = 6):
    return 200, {}, {"choices": [{"index": i, "message": {"content": t}} for i, t in enumerate(n_texts)],
                     "usage": {"completion_tokens": tokens}}


@pytest.fixture
def scripted():
    """A server answering from a script: ``script.append((status, headers, body))`` per request;
    when the script is empty it answers 200 with as many choices as the request's ``n``."""
    script: list = []
    calls: list[tuple[float, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append((time.monotonic(), body))
            if script:
                status, headers, payload = script.pop(0)
            else:
                n = body.get("n", 1)
                status, headers, payload = ok([f"{body['messages'][-1]['content']} #{i}" for i in range(n)], 2 * n)
            data = json.dumps(payload).encode() if not isinstance(payload, str) else payload.encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", script, calls
    server.shutdown()
    server.server_close()


def config(base_url: str, **overrides) -> EndpointConfig:
    # backoff_s=0: any wait measured below comes from the server's Retry-After, not our own back-off.
    return EndpointConfig(base_url=base_url, model="m", api_key_env="", backoff_s=0.0, **overrides)


def gaps(calls) -> list[float]:
    return [later[0] - earlier[0] for earlier, later in zip(calls, calls[1:], strict=False)]


def test_a_429_with_retry_after_seconds_is_waited_out_then_answered(scripted):
    base_url, script, calls = scripted
    script.append((429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}))
    with httpx.Client() as client:
        text, _ = chat_once(client, config(base_url), HELLO, seed=0)
    assert text == "hello #0" and len(calls) == 2
    assert 0.95 <= gaps(calls)[0] < 2.5


def test_a_503_with_retry_after_as_an_http_date_is_waited_out(scripted):
    base_url, script, calls = scripted
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: the wait is 1 to 2 s
    script.append((503, {"Retry-After": when}, "busy"))
    with httpx.Client() as client:
        text, _ = chat_once(client, config(base_url), HELLO, seed=0)
    assert text == "hello #0" and len(calls) == 2
    assert 0.9 <= gaps(calls)[0] < 3.0


def test_a_retry_after_longer_than_the_cap_waits_only_the_cap(scripted):
    base_url, script, calls = scripted
    script.append((429, {"Retry-After": "3600"}, "come back in an hour"))
    started = time.monotonic()
    with httpx.Client() as client:
        chat_once(client, config(base_url, max_retry_after_s=0.3), HELLO, seed=0)
    assert len(calls) == 2 and 0.25 <= gaps(calls)[0] and time.monotonic() - started < 2.0


def test_retry_after_reads_seconds_dates_and_milliseconds_and_ignores_garbage():
    now = 1_800_000_000.0
    assert retry_after_s(httpx.Headers({"Retry-After": "7"}), now=now) == 7.0
    assert retry_after_s(httpx.Headers({"Retry-After": email.utils.formatdate(now + 30, usegmt=True)}),
                         now=now) == pytest.approx(30.0)
    assert retry_after_s(httpx.Headers({"Retry-After": email.utils.formatdate(now - 30, usegmt=True)}),
                         now=now) == 0.0  # a date in the past: go now
    assert retry_after_s(httpx.Headers({"retry-after-ms": "250", "Retry-After": "9"}), now=now) == 0.25
    assert retry_after_s(httpx.Headers({"Retry-After": "soon"}), now=now) is None
    assert retry_after_s(httpx.Headers({}), now=now) is None


def test_n_samples_of_one_prompt_come_from_one_request(scripted):
    base_url, _, calls = scripted
    prompts = [HELLO, [{"role": "user", "content": "bye"}]]
    outputs = generate_endpoint(config(base_url, seed=10), prompts, samples=3)
    assert [o.text for o in outputs] == ["hello #0", "hello #1", "hello #2", "bye #0", "bye #1", "bye #2"]
    assert [o.seed for o in outputs] == [10, 10, 10, 11, 11, 11] and all(o.tokens == 2 for o in outputs)
    assert len(calls) == 2 and sorted((body["n"], body["seed"]) for _, body in calls) == [(3, 10), (3, 11)]


def test_one_sample_per_prompt_sends_no_n(scripted):
    base_url, _, calls = scripted
    outputs = generate_endpoint(config(base_url), [HELLO])
    assert [o.text for o in outputs] == ["hello #0"] and "n" not in calls[0][1]


def test_a_server_that_ignores_n_is_asked_again_for_the_rest(scripted):
    base_url, script, calls = scripted
    script += [ok(["first"]), ok(["second"], tokens=4)]  # one choice each time, whatever n said
    with httpx.Client() as client:
        samples = chat_samples(client, config(base_url), HELLO, seed=5, n=3)
    assert samples == [("first", 6), ("second", 4), ("hello #0", 2)]
    assert [(body.get("n"), body["seed"]) for _, body in calls] == [(3, 5), (2, 6), (None, 7)]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_retried(scripted, status):
    base_url, script, calls = scripted
    script += [(status, {}, "oops"), (status, {}, "oops")]
    with httpx.Client() as client:
        text, _ = chat_once(client, config(base_url, retries=2), HELLO, seed=0)
    assert text == "hello #0" and len(calls) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 501])
def test_a_4xx_or_501_fails_at_once_with_what_the_server_said(scripted, status):
    base_url, script, calls = scripted
    script.append((status, {"Retry-After": "0"}, {"error": {"message": "model 'm' does not exist"}}))
    with httpx.Client() as client, pytest.raises(EndpointError, match=f"HTTP {status}.*does not exist"):
        chat_once(client, config(base_url, retries=3), HELLO, seed=0)
    assert len(calls) == 1


def test_retries_give_up_after_the_last_attempt_and_say_why(scripted):
    base_url, script, calls = scripted
    script += [(503, {"Retry-After": "0"}, "still busy")] * 3
    with httpx.Client() as client, pytest.raises(EndpointError, match="HTTP 503: still busy"):
        chat_once(client, config(base_url, retries=2), HELLO, seed=0)
    assert len(calls) == 3


def test_an_answer_without_choices_is_an_error(scripted):
    base_url, script, _ = scripted
    script.append((200, {}, {"choices": []}))
    with httpx.Client() as client, pytest.raises(EndpointError, match="without choices"):
        chat_once(client, config(base_url), HELLO, seed=0)
