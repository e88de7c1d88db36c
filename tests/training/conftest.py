"""Fixtures shared by the training tests."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def _serve(answer):
    """A real HTTP server on 127.0.0.1 whose POSTs get ``answer(handler, body)``: (status, reply text or None)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, text = answer(self, body)
            self.send_response(status)
            if text is None:
                self.end_headers()
                return
            payload = json.dumps({"choices": [{"message": {"content": text}}], "usage": {"completion_tokens": 3}})
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture
def chat_server():
    """A real HTTP server speaking the OpenAI chat-completions protocol, answering by rule."""
    calls = []

    def answer(handler, body):
        calls.append((handler.path, body, handler.headers.get("Authorization")))
        if len(calls) == 1:  # the first request fails: the client must retry
            return 503, None
        last = body["messages"][-1]["content"]
        return 200, "B" if "Answer B:\nshort" in last else "A" if "Answer A:\nshort" in last else f"Echo: {last[:40]}"

    server, url = _serve(answer)
    yield url, calls
    server.shutdown()


@pytest.fixture
def judge_server():
    """judge_server(reply) -> base URL of a chat-completions server that answers reply(last user message)."""
    servers = []

    def start(reply):
        server, url = _serve(lambda handler, body: (200, reply(body["messages"][-1]["content"])))
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.shutdown()
