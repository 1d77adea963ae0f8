"""msa serve driven over loopback by the official ``openai`` client: OpenAI routes, errors, memory API.

One server process (the shipped msa-bios-small, an API key, a bank of 96 people added as a background
job) is shared by the module.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from msa.data import BiosConfig, BiosWorld  # noqa: E402
from msa.eval.metrics import exact_match  # noqa: E402
from msa.server.process import ServerProcess  # noqa: E402

KEY = "test-key-123"
PEOPLE = 96
MODEL = "msa-bios-small@demo"


def wait_job(client, job_id: str, timeout_s: float = 120.0) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", cast_to=object)
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture(scope="module")
def world():
    return BiosWorld(BiosConfig(num_people=PEOPLE, seed=3))


@pytest.fixture(scope="module")
def server(tmp_path_factory, world):
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "key").write_text(KEY + "\n")
    args = ["--model", "msa-bios-small", "--bank-dir", str(tmp / "banks"), "--api-key-file", str(tmp / "key"),
            "--max-body-bytes", "200000", "--max-tokens-limit", "512", "--sync-add-limit", "16"]  # fmt: skip
    proc = ServerProcess(args, tmp / "server.log", env={"OMP_NUM_THREADS": "1"}).start()
    try:
        c = openai.OpenAI(base_url=proc.url + "/v1", api_key=KEY, max_retries=0)
        c.post("/banks", body={"name": "demo"}, cast_to=object)
        docs = [{"text": t} for t in world.iter_documents(0, PEOPLE)]
        job = c.post("/banks/demo/documents", body={"documents": docs}, cast_to=object)  # > 16: a job
        assert job["object"] == "job" and job["total"] == PEOPLE
        done = wait_job(c, job["id"])
        assert done["status"] == "done" and done["done"] == PEOPLE and len(done["ids"]) == PEOPLE, done
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def ask(client, text: str, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], **kw)


def test_model_list_names_every_bank(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_answers_from_memory_with_usage_and_msa_extras(client, world):
    qs = list(world.iter_questions(6, "single", seed=5))
    right = 0
    for q in qs:
        r = ask(client, q.text, max_tokens=48)
        right += exact_match(r.choices[0].message.content, q.answer)
        assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        extras = r.model_extra["msa"]
        assert extras["bank"] == "demo" and extras["documents_read"] == [x["retrieved"] for x in extras["rounds"]]
        assert {"prefill", "decode"} <= set(extras["timings"])
    assert right >= 4, right  # msa-bios-small answers ~all single-hop questions of a 96-person memory


def test_completions_equal_chat_and_streams_equal_whole_answers(client, world):
    q = next(q for q in world.iter_questions(20, "multi", seed=5) if len(q.answer.split()) >= 2)
    whole = ask(client, q.text, max_tokens=48).choices[0].message.content
    text = client.completions.create(model=MODEL, prompt=q.text, max_tokens=48).choices[0].text
    assert text == whole and whole
    chunks = list(ask(client, q.text, max_tokens=48, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == whole
    assert len(deltas) >= 2, deltas  # token by token: a multi-word answer comes in pieces
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop" and "msa" in finals[0].model_extra
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    streamed = client.completions.create(model=MODEL, prompt=q.text, max_tokens=48, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole


def test_concurrent_questions_are_answered_in_one_engine_batch(client, world):
    from concurrent.futures import ThreadPoolExecutor

    qs = list(world.iter_questions(8, "single", seed=6))
    with ThreadPoolExecutor(len(qs)) as pool:
        out = list(pool.map(lambda q: ask(client, q.text, max_tokens=48), qs))
    sizes = [r.model_extra["msa"]["batch_size"] for r in out]
    assert max(sizes) > 1, sizes
    assert sum(exact_match(r.choices[0].message.content, q.answer) for r, q in zip(out, qs)) >= 5


def test_stop_strings_and_request_options(client, world):
    q = next(q for q in world.iter_questions(20, "multi", seed=5) if len(q.answer.split()) >= 2)
    whole = ask(client, q.text, max_tokens=48).choices[0].message.content
    first, second = whole.split(" ", 1)
    r = ask(client, q.text, max_tokens=48, stop=[" " + second.split()[0]])
    assert r.choices[0].message.content == first and r.choices[0].finish_reason == "stop"
    s = ask(client, q.text, max_tokens=48, stop=[" " + second.split()[0]], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in s if c.choices) == first
    r = ask(client, q.text, max_tokens=48, extra_body={"msa": {"max_rounds": 1, "doc_choice": "routed", "top_k": 2,
                                                               "routing": True}})  # fmt: skip
    rounds = r.model_extra["msa"]["rounds"]
    assert len(rounds) == 1 and rounds[0]["routing"]
    assert all(len(sel) <= 2 for sel in rounds[0]["routing"].values())


def test_temperature_samples_reproducibly_with_a_seed(client, world):
    q = next(iter(world.iter_questions(1, "multi", seed=8)))
    runs = [ask(client, q.text, max_tokens=48, temperature=1.5, seed=s) for s in (1, 1, 2, 3, 4)]
    texts = [r.choices[0].message.content for r in runs]
    assert texts[0] == texts[1] and runs[0].model_extra["msa"]["seed"] == 1
    assert len(set(texts[1:])) > 1 or len({r.usage.completion_tokens for r in runs}) > 1  # draws differ by seed
    greedy = [ask(client, q.text, max_tokens=48, temperature=0).choices[0].message.content for _ in range(2)]
    assert greedy[0] == greedy[1]


def test_errors_have_the_openai_shape_and_status(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "not_found_error" and e.value.body["code"] == "model_not_found"
    for kw, param in [({"n": 2}, "n"), ({"temperature": 3.0}, "temperature"), ({"max_tokens": 10_000}, "max_tokens")]:
        with pytest.raises(openai.BadRequestError) as e:
            ask(client, "Who?", **kw)
        assert e.value.status_code == 400 and e.value.body["param"] == param and e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError):
        ask(client, "Who?", extra_body={"msa": {"doc_choice": "psychic"}})
    with pytest.raises(openai.APIStatusError) as e:
        ask(client, "x" * 250_000)
    assert e.value.status_code == 413 and e.value.body["code"] == "body_too_large"
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # no Content-Length: counted while read
    conn.request("POST", "/v1/chat/completions", body=iter([b"{" + b" " * 150_000] * 2), encode_chunked=True,
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "body_too_large"
    conn.close()
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert e.value.status_code == 401
    req = urllib.request.Request(server.url + "/v1/models")  # no key at all
    with pytest.raises(urllib.error.HTTPError) as h:
        urllib.request.urlopen(req, timeout=10)
    assert h.value.code == 401 and json.loads(h.value.read())["error"]["type"] == "authentication_error"
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:  # open without a key
        assert json.loads(r.read())["status"] == "ok"


def test_memory_api_end_to_end(client):
    c = client
    bank = c.post("/banks", body={"name": "notes"}, cast_to=object)
    assert bank["name"] == "notes" and bank["documents"] == 0 and bank["model"] == "msa-bios-small@notes"
    with pytest.raises(openai.ConflictError):
        c.post("/banks", body={"name": "notes"}, cast_to=object)
    with pytest.raises(openai.BadRequestError):
        c.post("/banks", body={"name": "../etc"}, cast_to=object)
    for bad in ([{"text": "  "}], [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], [{"id": -1, "text": "x"}]):
        with pytest.raises((openai.BadRequestError, openai.ConflictError)):
            c.post("/banks/notes/documents", body={"documents": bad, "background": True}, cast_to=object)
    people = BiosWorld(BiosConfig(num_people=24, seed=9))
    texts = list(people.iter_documents(0, 24))
    ids = [f"p{i}" for i in range(24)]
    rep = c.post("/banks/notes/documents", body={"documents": [{"id": i, "text": t} for i, t in zip(ids[:4], texts[:4])]},
                 cast_to=object)  # fmt: skip
    assert rep["ids"] == ids[:4] and rep["added"] == 4
    job = c.post("/banks/notes/documents", cast_to=object,
                 body={"documents": [{"id": i, "text": t} for i, t in zip(ids[4:], texts[4:])], "background": True})  # fmt: skip
    done = wait_job(c, job["id"])
    assert done["status"] == "done" and done["ids"] == ids[4:] and done["added"] == 20
    assert c.get("/banks/notes", cast_to=object)["documents"] == 24
    pages = [c.get("/banks/notes/documents", cast_to=object, options={"params": {"offset": o, "limit": 10}})
             for o in (0, 10, 20)]  # fmt: skip
    listed = [d["id"] for p in pages for d in p["data"]]
    assert sorted(listed) == sorted(ids) and [len(p["data"]) for p in pages] == [10, 10, 4] and pages[0]["total"] == 24
    assert c.get("/banks/notes/documents/p7", cast_to=object)["text"] == texts[7]
    assert c.get("/banks/demo/documents/0", cast_to=object)["id"] == 0  # int ids stay ints
    q = next(iter(people.iter_questions(1, "single", seed=2)))
    gold = f"p{q.gold_ids[0]}"
    found = c.post("/banks/notes/search", body={"query": q.text, "top_k": 4}, cast_to=object)
    assert found["data"][0]["id"] == gold and found["layers"]
    r = c.chat.completions.create(model="msa-bios-small@notes", messages=[{"role": "user", "content": q.text}], max_tokens=48)
    assert gold in r.model_extra["msa"]["documents_read"][0]
    new_text = texts[q.gold_ids[0]].replace(q.answer, "Zanzibar")
    assert new_text != texts[q.gold_ids[0]]
    assert c.put(f"/banks/notes/documents/{gold}", body={"text": new_text}, cast_to=object)["updated"]
    assert c.get(f"/banks/notes/documents/{gold}", cast_to=object)["text"] == new_text
    assert c.delete("/banks/notes/documents/p3", cast_to=object)["deleted"]
    with pytest.raises(openai.NotFoundError):
        c.get("/banks/notes/documents/p3", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        c.get("/banks/nowhere", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        c.get("/jobs/job-0000000000000000", cast_to=object)
    assert c.get("/banks/notes", cast_to=object)["deleted"] >= 1
    c.post("/banks/notes/compact", cast_to=object)
    stats = c.get("/banks/notes", cast_to=object)
    assert stats["documents"] == 23 and stats["deleted"] == 0
    r = c.chat.completions.create(model="notes", messages=[{"role": "user", "content": q.text}], max_tokens=48)
    assert gold in r.model_extra["msa"]["documents_read"][0]  # the updated document, after compaction


def test_metrics_page_is_prometheus_text(server):
    req = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        page = r.read().decode()
        assert r.headers["content-type"].startswith("text/plain")
    for series in ('msa_requests_total{route="/v1/chat/completions",status="200"}', "msa_request_seconds_bucket{",
                   "msa_completion_tokens_total ", 'msa_queue_depth{bank="demo"} 0', "msa_batch_size_count",
                   'msa_jobs{status="done"}'):  # fmt: skip
        assert series in page, series
