"""Fixtures shared by the training tests."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@pytest.fixture
def chat_server():
    """A real HTTP server speaking the OpenAI chat-completions protocol, answering by rule."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append((self.path, body, self.headers.get("Authorization")))
            if len(calls) == 1:  # the first request fails: the client must retry
                self.send_response(503)
                self.end_headers()
                return
            last = body["messages"][-1]["content"]
            text = "B" if "Answer B:\nshort" in last else "A" if "Answer A:\nshort" in last else f"Echo: {last[:40]}"
            payload = json.dumps({"choices": [{"message": {"content": text}}], "usage": {"completion_tokens": 3}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", calls
    server.shutdown()


@pytest.fixture
def judge_server():
    """judge_server(reply) -> base URL of a chat-completions server that answers reply(last user message)."""
    servers = []

    def start(reply):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                payload = json.dumps({"choices": [{"message": {"content": reply(body["messages"][-1]["content"])}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
