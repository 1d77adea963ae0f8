"""msa serve under faults: a client leaving mid-stream, a full queue, SIGKILL during a background add.

The server runs a tiny random-weight model (answers do not matter; it generates until max_tokens, so a
stream lasts as long as asked) with one queue slot.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import build_tiny_model, build_tiny_tokenizer  # noqa: E402

from msa.memory import MemoryBank  # noqa: E402
from msa.server.process import ServerProcess  # noqa: E402

MODEL = "tiny@faults"
LONG = 20_000  # tokens: a stream that outlives the test unless it is stopped
TIMEOUT_S = 6  # the server's request timeout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    build_tiny_model().save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    tmp = tmp_path_factory.mktemp("faults")
    args = ["--model", str(checkpoint), "--bank-dir", str(tmp / "banks"), "--max-queue", "1",
            "--max-tokens-limit", str(LONG), "--request-timeout-s", str(TIMEOUT_S)]  # fmt: skip
    proc = ServerProcess(args, tmp / "server.log", env={"OMP_NUM_THREADS": "1"}).start()
    try:
        c = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0)
        c.post("/banks", body={"name": "faults"}, cast_to=object)
        c.post("/banks/faults/documents", body={"documents": [{"text": f"Alice {i} was born in Paris."} for i in range(8)]},
               cast_to=object)  # fmt: skip
        yield proc
    finally:
        proc.stop()


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{") or line.startswith(name + " "))


def long_stream(client):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Where was Alice born?"}],
                                          max_tokens=LONG, stream=True)  # fmt: skip


def short_ask(client):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who?"}], max_tokens=4)


def eventually(check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except (AssertionError, openai.RateLimitError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_full_queue_answers_429_and_a_client_leaving_mid_stream_frees_its_slot(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    stream = long_stream(c)  # headers come after the first generated token: admitted, the only slot taken
    with pytest.raises(openai.RateLimitError) as e:
        short_ask(c)
    assert e.value.status_code == 429 and e.value.body["type"] == "rate_limit_error"
    assert metric(server.url, "msa_queue_depth") == 1
    stream.close()  # the client goes away mid-stream
    r = eventually(lambda: short_ask(c))  # its slot is free again: a new question is admitted and answered
    assert r.choices[0].finish_reason in ("stop", "length")
    assert metric(server.url, "msa_cancelled_total") >= 1
    assert metric(server.url, "msa_batches_aborted_total") >= 1  # the abandoned generation was stopped
    eventually(lambda: assert_equal(metric(server.url, "msa_queue_depth"), 0))


def assert_equal(a, b):
    assert a == b, (a, b)


def test_a_question_past_the_request_timeout_gets_504_and_frees_its_slot(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who?"}], max_tokens=LONG)
    assert e.value.status_code == 504 and e.value.body["code"] == "timeout"
    assert TIMEOUT_S <= time.monotonic() - t0 < 60
    assert eventually(lambda: short_ask(c)).choices


def test_sigkill_during_background_add_then_restart_resumes_exactly(tmp_path, checkpoint):
    n = 1200
    texts = [f"Person {i} was born in town {i % 97} and works as a baker number {i}." for i in range(n)]
    ids = [f"d{i}" for i in range(n)]
    args = ["--model", str(checkpoint), "--bank-dir", str(tmp_path / "banks"), "--job-slice", "16"]
    first = ServerProcess(args, tmp_path / "first.log", env={"OMP_NUM_THREADS": "1"}).start()
    try:
        c = openai.OpenAI(base_url=first.url + "/v1", api_key="unused", max_retries=0)
        c.post("/banks", body={"name": "big"}, cast_to=object)
        job = c.post("/banks/big/documents", cast_to=object,
                     body={"documents": [{"id": i, "text": t} for i, t in zip(ids, texts)]})  # fmt: skip
        assert job["status"] in ("queued", "running")
        while (state := c.get(f"/jobs/{job['id']}", cast_to=object))["done"] < 2 * state.get("step", 8) or not state["step"]:
            assert state["status"] in ("queued", "running"), state
            if state["done"]:  # readers are served during the write, from committed documents only
                hits = c.post("/banks/big/search", body={"query": "Person 5 baker"}, cast_to=object)["data"]
                assert hits and all(int(h["id"][1:]) < n for h in hits)
            time.sleep(0.02)
    finally:
        first.kill()  # SIGKILL mid-job
    assert state["done"] < n, "the job finished before the kill: make it larger"
    with MemoryBank.open(tmp_path / "banks" / "big", readonly=True) as bank:
        held = bank.list_ids()
        assert len(held) >= state["done"] and len(held) < n  # what was committed, no more
        assert len(set(held)) == len(held) and all(bank.get_text(d) == texts[int(d[1:])] for d in held)
    second = ServerProcess(args, tmp_path / "second.log", env={"OMP_NUM_THREADS": "1"}).start()
    try:
        c = openai.OpenAI(base_url=second.url + "/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 120
        while (after := c.get(f"/jobs/{job['id']}", cast_to=object))["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, after
            time.sleep(0.1)
        assert after["status"] == "done" and after["resumed"] == 1 and after["done"] == n and after["ids"] == ids, {
            k: v for k, v in after.items() if k != "ids"}
        assert c.get("/banks/big", cast_to=object)["documents"] == n
    finally:
        second.stop()
    with MemoryBank.open(tmp_path / "banks" / "big", readonly=True) as bank:
        held = bank.list_ids()
        assert len(held) == n and set(held) == set(ids)  # every document exactly once
        assert all(bank.get_text(d) == t for d, t in zip(ids, texts))
        assert json.loads(json.dumps(bank.stats()))["documents"] == n
