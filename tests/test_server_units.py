"""The server's parts without HTTP: the batching scheduler and the streamed answer text."""

from __future__ import annotations

import threading
import time

import pytest

from msa.engine import Answer
from msa.server.answer_text import AnswerStream, cut_at_stops
from msa.server.metrics import server_metrics
from msa.server.scheduler import AskOptions, Cancelled, QueueFull, Scheduler

LEAD, ENDS = "The answer to the question is: ", ["<|im_end|>", "<|endoftext|>"]


def fake_answers(calls: list, gate: threading.Event | None = None, tokens: int = 3):
    """An answer_batch that records its batches and "generates" ``tokens`` tokens per question."""

    def answer_batch(texts, options, on_token, samplers):
        calls.append(list(texts))
        for step in range(tokens):
            if gate is not None:
                gate.wait(10)
            for i in range(len(texts)):
                on_token(i, f"t{step}")
        return [Answer(t, t.upper(), "", [], {}) for t in texts]

    return answer_batch


def test_waiting_questions_share_one_batch_and_equal_options_only():
    calls, gate = [], threading.Event()
    s = Scheduler("b", fake_answers(calls, gate), server_metrics(), max_queue=8, max_batch=8, wait_s=0.2)
    try:
        qs = [s.submit(f"q{i}", AskOptions()) for i in range(4)] + [s.submit("other", AskOptions(max_rounds=1))]
        gate.set()
        out = [q.future.result(10) for q in qs]
        assert [a.answer.text for a in out] == ["Q0", "Q1", "Q2", "Q3", "OTHER"]
        assert sorted(map(len, calls)) == [1, 4] and out[0].batch_size == 4 and out[0].completion_tokens == 3
        assert s.depth == 0
    finally:
        s.close()


def test_a_full_queue_refuses_and_a_cancelled_question_frees_its_slot_and_stops_its_batch():
    calls, gate = [], threading.Event()
    m = server_metrics()
    s = Scheduler("b", fake_answers(calls, gate, tokens=1000), m, max_queue=1, max_batch=4, wait_s=0.0)
    try:
        q = s.submit("long", AskOptions())
        with pytest.raises(QueueFull):
            s.submit("more", AskOptions())
        s.cancel(q)
        assert s.depth == 0
        q2 = s.submit("next", AskOptions())  # the freed slot takes a new question
        gate.set()
        with pytest.raises(Cancelled):
            q.future.result(10)
        assert q2.future.result(10).answer.text == "NEXT"
        assert m.value("msa_batches_aborted_total", bank="b") + m.value("msa_cancelled_total", bank="b") >= 1
    finally:
        s.close()


def test_engine_errors_reach_every_question_of_the_batch():
    def failing(texts, options, on_token, samplers):
        raise ValueError("the memory bank is empty: add documents before asking")

    s = Scheduler("b", failing, server_metrics(), max_queue=4, wait_s=0.05)
    try:
        qs = [s.submit(f"q{i}", AskOptions()) for i in range(2)]
        for q in qs:
            with pytest.raises(ValueError, match="empty"):
                q.future.result(10)
        deadline = time.monotonic() + 5
        while s.depth and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.depth == 0
    finally:
        s.close()


def stream_of(pieces: list[str], stops: list[str], final: str) -> tuple[list[str], str]:
    st = AnswerStream(LEAD, ENDS, stops)
    deltas = [d for p in pieces if (d := st.feed(p))]
    rest = st.finish(final)
    return deltas + ([rest] if rest else []), "".join(deltas) + rest


@pytest.mark.parametrize("stops", [[], [" of"], ["Pra"], ["<|im"]])
def test_streamed_deltas_join_to_the_final_answer(stops):
    transcript = ["[Dareus Drenus]", "<|object_ref_end|>", "The answer", " to the question is: ", "Univers", "ity",
                  " of", " Pra", "ory", "<|im_end|>"]  # fmt: skip
    answer = "University of Praory"
    final, _ = cut_at_stops(answer, stops)
    deltas, joined = stream_of(transcript, stops, final)
    assert joined == final
    if not stops:
        assert deltas[:2] == ["Univers", "ity"]  # token by token, nothing held back but what must be


def test_text_that_may_become_a_marker_is_held_back_until_it_cannot():
    st = AnswerStream(LEAD, ENDS, ["STOP"])
    assert st.feed(LEAD + "Paris") == "Paris"
    assert st.feed(" <|im") == ""  # could be the end of the turn
    assert st.feed("age|>") == " <|image|>"
    assert st.feed(" ST") == ""
    assert st.feed("OP and more") == " " and st.stopped  # the text before the stop, as the final answer has it
    assert st.sent == "Paris <|image|> "


def test_serve_refuses_unsafe_or_empty_setups_with_one_line(tmp_path, capsys):
    from msa.cli import main
    from msa.server import ServerConfig

    with pytest.raises(ValueError, match="API key"):
        ServerConfig(model="m", bank_dir=tmp_path, host="0.0.0.0")
    assert ServerConfig(model="m", bank_dir=tmp_path, host="0.0.0.0", api_key="k").api_key == "k"
    assert ServerConfig(model="m", bank_dir=tmp_path, host="::1").host == "::1"  # loopback: no key needed
    cases = [
        (["--host", "0.0.0.0", "--bank-dir", str(tmp_path)], "needs an API key"),
        ([], "nothing to serve"),
        (["--bank", str(tmp_path / "missing")], "not a memory bank"),
        (["--bank-dir", str(tmp_path), "--api-key-file", str(tmp_path / "nokey")], "no such API key file"),
    ]
    for extra, message in cases:
        assert main(["serve", "--model", "msa-bios-tiny", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("msa: error: ") and message in err and err.count("\n") == 1, err


def test_a_stopping_runner_leaves_its_job_queued_and_the_next_one_finishes_it(tmp_path):
    from msa.server.jobs import JobRunner, JobStore

    stored: dict[str, list] = {}  # job step name -> ids: what a bank would hold
    started, release = threading.Event(), threading.Event()

    def add(texts, ids, name, on_duplicate):
        started.set()
        release.wait(10)
        stored.setdefault(name, list(ids))
        return {"ids": list(ids), "added": len(ids)}

    texts, ids = [f"t{i}" for i in range(10)], [f"d{i}" for i in range(10)]
    first = JobRunner("b", JobStore(tmp_path), add, lambda fn: fn(), slice_size=3)
    job = first.submit(texts, ids, None)
    assert started.wait(10)
    stopper = threading.Thread(target=first.close)
    stopper.start()  # asks to stop while the first step is being stored
    time.sleep(0.05)
    release.set()
    stopper.join(10)
    kept = JobStore(tmp_path).load()[0]
    assert kept.id == job.id and kept.status == "queued" and kept.done == 3 and kept.ids == ids[:3]
    second = JobRunner("b", JobStore(tmp_path), add, lambda fn: fn(), slice_size=3)
    deadline = time.monotonic() + 10
    while second.jobs[job.id].status != "done" and time.monotonic() < deadline:
        time.sleep(0.01)
    second.close()
    done = second.jobs[job.id]
    assert done.status == "done" and done.ids == ids and done.resumed == 1 and done.added == 10
    assert sorted(stored) == [f"{job.id}.{k}" for k in range(4)]  # every step once, under its own name


def test_an_unexpected_failure_is_a_500_in_the_openai_error_shape(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from msa.server import ServerConfig, create_app

    class BrokenRegistry:
        metrics, banks = server_metrics(), {}

        def get(self, name):
            raise RuntimeError("disk on fire")

        def close(self):
            pass

    app = create_app(ServerConfig(model="m", bank_dir=tmp_path), registry=BrokenRegistry())
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "RuntimeError" in r.json()["error"]["message"] and "fire" not in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", json={"model": "x"})  # invalid body: 400, not FastAPI's 422
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
