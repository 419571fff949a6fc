"""An OpenAI-compatible chat endpoint on 127.0.0.1 that stands in for an LLM: it answers a loop's requests for a patch
with recorded answers, in the order given, and any other request (a summary, a recommendation) with a short note.
Every prompt it was sent is kept, in order."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ANSWERS = Path(__file__).resolve().parent / "fixtures" / "llm_answers"
NOTE = "Keep every plan valid and make the packing faster."


class RecordedLLM:
    """Serves `answers` (texts) to the requests that ask for SEARCH/REPLACE blocks, the last one again once they
    run out. `url` is the server's base URL (`.../v1`); `prompts` every request's messages, joined."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []
        self.patch_prompts: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordedLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()

    def _answer(self, prompt: str) -> str:
        with self._lock:
            self.prompts.append(prompt)
            if "SEARCH" not in prompt:
                return NOTE
            self.patch_prompts.append(prompt)
            return self.answers[min(len(self.patch_prompts), len(self.answers)) - 1]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recorded = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = "\n".join(str(message.get("content", "")) for message in request.get("messages", []))
                body = json.dumps({
                    "id": "recorded", "object": "chat.completion", "created": int(time.time()),
                    "model": request.get("model", "recorded"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": recorded._answer(prompt)},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def recorded_answers(*numbers: str) -> list[str]:
    """The recorded answers of those numbers (fixtures/llm_answers/answer_NUMBER.txt), in that order."""
    return [(ANSWERS / f"answer_{number}.txt").read_text() for number in numbers]
