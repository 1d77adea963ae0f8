"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions (SSE streaming)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from msa.engine import Answer
from msa.engine.generation import Sampler
from msa.memory import BankError
from msa.server.answer_text import AnswerStream, cut_at_stops
from msa.server.banks import Registry, ServedBank
from msa.server.scheduler import Answered, AskOptions, Cancelled, QueueFull, Ticket
from msa.server.schemas import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    GenerateRequest,
    MsaOptions,
    chat_question,
    completion_question,
    stops,
)

router = APIRouter()
POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


def registry_of(request: Request) -> Registry:
    return request.app.state.registry


def served_bank(registry: Registry, model: str) -> ServedBank:
    try:
        return registry.get(model)
    except KeyError:
        raise ApiError(404, f"the model {model!r} does not exist (GET /v1/models lists them)", "model",
                       "model_not_found") from None  # fmt: skip


def _model_card(bank: ServedBank, created: int) -> dict[str, Any]:
    return {"id": bank.model_id, "object": "model", "created": created, "owned_by": "msa"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    reg, created = registry_of(request), request.app.state.started
    return {"object": "list", "data": [_model_card(b, created) for b in list(reg.banks.values())]}


@router.get("/v1/models/{model}")
async def get_model(request: Request, model: str) -> dict[str, Any]:
    return _model_card(served_bank(registry_of(request), model), request.app.state.started)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatRequest):
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return await _generate(request, body, chat_question(body), limit, chat=True)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest):
    if body.echo or body.logprobs:
        raise ApiError(400, "echo and logprobs are not supported", "echo" if body.echo else "logprobs")
    return await _generate(request, body, completion_question(body), body.max_tokens, chat=False)


def _options(request: Request, body: GenerateRequest, max_tokens: int | None) -> AskOptions:
    cfg = request.app.state.config
    if body.n != 1:
        raise ApiError(400, "n must be 1", "n")
    if max_tokens is not None and max_tokens > cfg.max_tokens_limit:
        raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {cfg.max_tokens_limit}",
                       "max_tokens")  # fmt: skip
    o = body.msa or MsaOptions()
    return AskOptions(max_new_tokens=max_tokens or cfg.default_max_tokens, max_rounds=o.max_rounds or AskOptions.max_rounds,
                      doc_choice=o.doc_choice, top_k=o.top_k, interleave=o.interleave, return_routing=o.routing)  # fmt: skip


async def _generate(request: Request, body: GenerateRequest, question: str, max_tokens: int | None, chat: bool):
    reg: Registry = registry_of(request)
    bank = served_bank(reg, body.model)
    options = _options(request, body, max_tokens)
    stop = stops(body)
    if not question.strip():
        raise ApiError(400, "the question is empty", "messages" if chat else "prompt")
    sampler = None
    if body.temperature:  # seeded: the request's seed, else a fresh one reported in the msa field
        sampler = Sampler(body.temperature, body.seed if body.seed is not None else secrets.randbits(63))
    ticket, deadline = submit(request, bank, question, options, body.stream, sampler)
    reply = _Reply(reg, bank, body.model, question, stop, chat, sampler)
    if not body.stream:
        return JSONResponse(reply.whole(await wait_answer(ticket, request, deadline)))
    first = await _next_event(ticket, deadline)  # errors before the first token keep their status code
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    return StreamingResponse(_sse(reply, ticket, first, deadline, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})  # fmt: skip


async def _next_event(ticket: Ticket, deadline: float) -> str | None:
    try:
        ev = await ticket.next(deadline)
    except TimeoutError:
        raise _timeout(ticket) from None
    except asyncio.CancelledError:
        ticket.cancel()
        raise
    if ev is None:
        _outcome(ticket)  # raises the batch's error, if any
    return ev


def submit(request: Request, bank: ServedBank, text: str, options: AskOptions, stream: bool,
           sampler: Sampler | None = None) -> tuple[Ticket, float]:  # fmt: skip
    """Queue a question on its bank (429 when the queue is full); the ticket and its deadline."""
    try:
        ticket = Ticket(bank.scheduler, text, options, stream, sampler)
    except QueueFull as e:
        raise ApiError(429, f"{e}; retry later", code="queue_full") from None
    return ticket, time.monotonic() + request.app.state.config.request_timeout_s


async def wait_answer(ticket: Ticket, request: Request, deadline: float) -> Answered:
    """The answer of a non-streamed question; cancels it when the client goes away or time runs out."""
    try:
        while True:
            try:
                if await ticket.next(min(deadline, time.monotonic() + POLL_S)) is None:
                    return _outcome(ticket)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise _timeout(ticket) from None
                if await request.is_disconnected():
                    raise ApiError(499, "the client closed the connection", code="client_closed") from None
    finally:
        if not ticket.question.future.done():
            ticket.cancel()


def _timeout(ticket: Ticket) -> ApiError:
    ticket.cancel()
    return ApiError(504, "no answer within the server's request timeout", code="timeout")


def _outcome(ticket: Ticket) -> Answered:
    try:
        return ticket.result()
    except Cancelled:
        raise ApiError(499, "the request was cancelled", code="cancelled") from None
    except (ValueError, TypeError, KeyError, BankError) as e:
        raise ApiError(400, str(e).splitlines()[0] if str(e) else type(e).__name__) from None


async def _sse(reply: "_Reply", ticket: Ticket, first: str | None, deadline: float,
               include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
    stream = AnswerStream(reply.lead, reply.ends, reply.stop)
    try:
        yield _event(reply.chunk(None, role=True))
        ev = first
        while ev is not None:
            delta = stream.feed(ev)
            if delta:
                yield _event(reply.chunk(delta))
            ev = await ticket.next(deadline)
        answered = _outcome(ticket)
        text, finish = reply.final_text(answered.answer)
        rest = stream.finish(text)
        if rest:
            yield _event(reply.chunk(rest))
        usage = reply.usage(answered)
        yield _event(reply.chunk(None, finish=finish, extras=reply.extras(answered)))
        if include_usage:
            yield _event({**reply.chunk(None), "choices": [], "usage": usage})
    except TimeoutError:
        yield _event(_timeout(ticket).body())
    except ApiError as e:
        yield _event(e.body())
    finally:
        if not ticket.question.future.done():
            ticket.cancel()
    yield "data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class _Reply:
    """Builds the response bodies of one chat or text completion."""

    def __init__(self, reg: Registry, bank: ServedBank, model: str, question: str, stop: list[str], chat: bool,
                 sampler: Sampler | None = None):  # fmt: skip
        self.reg, self.bank, self.model, self.stop, self.chat, self.sampler = reg, bank, model, stop, chat, sampler
        prompt = bank.reader.prompt
        self.lead, self.ends = prompt.answer_lead, [prompt.end_of_turn, "<|endoftext|>"]
        self.prompt_tokens = len(reg.tokenizer.encode(question, add_special_tokens=False))
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def final_text(self, answer: Answer) -> tuple[str, str]:
        text, hit = cut_at_stops(answer.text, self.stop)
        tail = answer.transcript.rsplit(self.lead, 1)[-1]
        ended = hit or any(e in tail for e in self.ends)
        return text, "stop" if ended else "length"

    def usage(self, a: Answered) -> dict[str, int]:
        """Token counts (question tokens; tokens generated over all rounds), also added to the metrics."""
        m = self.reg.metrics
        m.inc("msa_prompt_tokens_total", self.prompt_tokens)
        m.inc("msa_completion_tokens_total", a.completion_tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": a.completion_tokens,
                "total_tokens": self.prompt_tokens + a.completion_tokens}  # fmt: skip

    def extras(self, a: Answered) -> dict[str, Any]:
        """The ``msa`` field: documents read per round (user ids), per-stage seconds, batching."""
        uid = self.bank.display_id
        rounds = []
        for r in a.answer.rounds:
            info = {"requests": r.requests, "requested": [uid(d) for d in r.requested],
                    "retrieved": [uid(d) for d in r.retrieved], "unknown": r.unknown, "timings": r.timings}  # fmt: skip
            if r.routing:
                info["routing"] = {str(layer): [[uid(d), s] for d, s in sel] for layer, sel in r.routing.items()}
            rounds.append(info)
        return {"bank": self.bank.name, "documents_read": [x["retrieved"] for x in rounds], "rounds": rounds,
                "timings": a.answer.timings, "batch_size": a.batch_size, "queue_seconds": a.queue_s,
                "seed": self.sampler.seed if self.sampler else None}  # fmt: skip

    def whole(self, a: Answered) -> dict[str, Any]:
        text, finish = self.final_text(a.answer)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                      "logprobs": None}  # fmt: skip
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion", "created": self.created,
                "model": self.model, "choices": [choice], "usage": self.usage(a), "msa": self.extras(a)}  # fmt: skip

    def chunk(self, delta: str | None, role: bool = False, finish: str | None = None,
              extras: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        if self.chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "choices": [choice]}  # fmt: skip
        if extras is not None:
            out["msa"] = extras
        return out
