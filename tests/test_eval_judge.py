"""The LLM judge against a fake OpenAI-compatible server on 127.0.0.1 (no outside network)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from msa.eval.judge import JudgeItem, LLMJudge, parse_score


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        prompt = body["messages"][0]["content"]
        if "FAIL500" in prompt:
            self.send_response(500)
            self.end_headers()
            return
        if "FAIL400" in prompt:
            self.send_response(400)
            self.end_headers()
            return
        if "GARBAGE" in prompt:
            reply = b"not json"
        else:
            content = "no idea" if "NODIGIT" in prompt else ("Score: 4" if "close" in prompt else "5")
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_parse_score():
    assert parse_score("4") == 4
    assert parse_score("Score: 3/5") == 3
    assert parse_score("9 then 2") == 2
    assert parse_score("none") is None
    assert parse_score("") is None and parse_score(None) is None


def test_judge_scores_and_counts_failures(server, monkeypatch):
    monkeypatch.setenv("MSA_TEST_JUDGE_KEY", "sekret")
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/"
    judge = LLMJudge(url, "fake-judge", api_key_env="MSA_TEST_JUDGE_KEY", retries=1, backoff=0.01, timeout=5)
    items = [
        JudgeItem("q1", "Paris", "Paris"),
        JudgeItem("q2", "Paris", "close to Paris"),
        JudgeItem("q3 NODIGIT", "a", "b"),
        JudgeItem("q4 FAIL500", "a", "b"),
        JudgeItem("q5 FAIL400", "a", "b"),
        JudgeItem("q6 GARBAGE", "a", "b"),
    ]
    s = judge.judge_many(items, workers=3)
    assert [r.score for r in s.results] == [5, 4, None, None, None, None]
    assert s.graded == 2 and s.failures == 4
    assert s.mean == 4.5
    assert s.mean_failures_as_zero == pytest.approx(9 / 6)
    assert s.results[3].attempts == 2 and s.results[3].error == "HTTP 500"  # retried once
    assert s.results[4].attempts == 1  # 4xx is not retried
    assert "malformed" in s.results[5].error
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sekret"
    assert body["model"] == "fake-judge" and body["temperature"] == 0.0
    assert s.to_dict()["failures"] == 4


def test_judge_unreachable_is_a_failure():
    judge = LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=None, retries=0, timeout=2)
    r = judge.score(JudgeItem("q", "a", "b"))
    assert r.score is None and r.error
