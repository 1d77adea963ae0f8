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


def test_bench_judge_cli_over_records(server, tmp_path, capsys):
    from msa.eval.cli import bench_main

    records = tmp_path / "r.records.jsonl"
    rows = [
        {"section": "bios/single", "memory_tokens": 2048, "question": "q", "answers": ["Paris"], "prediction": "Paris"},
        {"section": "bios/single", "memory_tokens": 2048, "question": "q NODIGIT", "answers": ["a"], "prediction": "b"},
        {"section": "rag/k1/single", "memory_tokens": 2048, "question": "q", "answers": ["x"], "prediction": "close"},
    ]
    records.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "judge.json"
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    rc = bench_main(["judge", "--records", str(records), "--base-url", url, "--judge-model", "m",
                     "--api-key-env", "MSA_UNSET_KEY_FOR_TEST", "--workers", "2", "--out", str(out)])  # fmt: skip
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["overall"]["graded"] == 2 and rep["overall"]["failures"] == 1
    assert rep["sections"]["bios/single@2048"] == {"mean": 5.0, "graded": 1, "failures": 1}
    assert rep["sections"]["rag/k1/single@2048"]["mean"] == 4.0
    assert bench_main(["judge", "--records", str(tmp_path / "missing"), "--base-url", url, "--judge-model", "m"]) == 2
    with pytest.raises(SystemExit):
        bench_main(["scaling", "--work-dir", "w", "--out", "o", "--sizes", "12Q"])


class _FlakyHandler(BaseHTTPRequestHandler):
    """Fails the first ``server.fail_first`` requests with 503 (or a dropped connection), then grades:
    "5" when the prediction equals the reference, else "2"."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.calls += 1
            n = self.server.calls
        if n <= self.server.fail_first:
            if n % 2:
                self.send_response(503)
                self.end_headers()
            else:
                self.close_connection = True  # no reply at all: the client sees a network error
            return
        prompt = body["messages"][0]["content"]
        ref = prompt.split("Reference answer: ")[1].split("\n")[0]
        pred = prompt.split("Answer to grade: ")[1].split("\n")[0]
        content = "" if pred == "EMPTY" else ("5" if pred == ref else "2")
        reply = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture()
def flaky():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    srv.calls, srv.fail_first, srv.lock = 0, 0, threading.Lock()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_judge_retries_with_backoff_then_caches_every_verdict(flaky, tmp_path):
    from msa.eval.judge import JudgeCache

    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    flaky.fail_first = 3
    cache = tmp_path / "cache.jsonl"
    items = [JudgeItem("q1", "Paris", "Paris"), JudgeItem("q2", "Rome", "Milan"), JudgeItem("q3", "x", "EMPTY")]
    judge = LLMJudge(url, "judge-a", api_key_env=None, retries=3, backoff=0.01, timeout=5, cache=cache)
    first = [judge.score(it) for it in items]  # one at a time: the first item absorbs the 3 failures
    assert [r.score for r in first] == [5, 2, None]
    assert first[0].attempts == 4 and first[1].attempts == 1
    assert flaky.calls == 6
    assert len(JudgeCache(cache)) == 3  # the empty reply is a verdict too (it scores 0 as the release)
    again = LLMJudge(url, "judge-a", api_key_env=None, retries=0, cache=str(cache)).judge_many(items, workers=3)
    assert flaky.calls == 6  # the re-run made zero requests
    assert [r.score for r in again.results] == [5, 2, None] and all(r.cached and r.attempts == 0 for r in again.results)
    assert again.mean_failures_as_zero == pytest.approx(7 / 3) and again.mean == 3.5
    other = LLMJudge(url, "judge-b", api_key_env=None, retries=0, cache=cache).judge_many(items[:1], workers=1)
    assert flaky.calls == 7 and other.results[0].score == 5  # another judge model is never served from the cache


def test_judge_gives_up_after_its_retries_and_does_not_cache_failures(flaky, tmp_path):
    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    flaky.fail_first = 100
    judge = LLMJudge(url, "m", api_key_env=None, retries=2, backoff=0.01, timeout=5, cache=tmp_path / "c.jsonl")
    r = judge.score(JudgeItem("q", "a", "a"))
    assert r.score is None and r.attempts == 3 and flaky.calls == 3
    assert not (tmp_path / "c.jsonl").exists()


def test_offline_scores():
    from msa.eval.judge import offline_scores

    s = offline_scores(["Paris", "the rome", "x y"], ["paris", ["Milan", "Rome"], "x z"])
    assert s["mode"] == "offline" and s["em"] == pytest.approx(2 / 3)
    assert s["token_f1"] == pytest.approx((1 + 1 + 0.5) / 3)
    with pytest.raises(ValueError):
        offline_scores(["a"], [])
