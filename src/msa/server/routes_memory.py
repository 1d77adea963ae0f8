"""The memory API: banks, documents (adds as background jobs), search, compaction, jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from msa.memory.ids import check_ids, check_texts
from msa.server.banks import Registry, ServedBank
from msa.server.jobs import JOB_ID
from msa.server.routes_openai import registry_of, submit, wait_answer
from msa.server.scheduler import AskOptions
from msa.server.schemas import AddDocuments, ApiError, CreateBank, Search, UpdateDocument

router = APIRouter()
MAX_LIST = 1000


def _bank(request: Request, name: str) -> ServedBank:
    try:
        return registry_of(request).get(name)
    except KeyError:
        raise ApiError(404, f"no bank named {name!r} is served", "bank", "bank_not_found") from None


def _info(bank: ServedBank) -> dict[str, Any]:
    stats = bank.reader.stats()  # its "model": what the bank was encoded with
    return {"object": "bank", **stats, "name": bank.name, "model": bank.model_id, "encoded_with": stats.get("model")}


@router.get("/v1/banks")
async def list_banks(request: Request) -> dict[str, Any]:
    banks = list(registry_of(request).banks.values())
    return {"object": "list", "data": await run_in_threadpool(lambda: [_info(b) for b in banks])}


@router.post("/v1/banks", status_code=201)
async def create_bank(request: Request, body: CreateBank) -> dict[str, Any]:
    reg: Registry = registry_of(request)
    bank = await run_in_threadpool(reg.create, body.name)
    return await run_in_threadpool(_info, bank)


@router.get("/v1/banks/{name}")
async def bank_stats(request: Request, name: str) -> dict[str, Any]:
    return await run_in_threadpool(_info, _bank(request, name))


@router.post("/v1/banks/{name}/documents")
async def add_documents(request: Request, name: str, body: AddDocuments):
    bank = _bank(request, name)
    cfg = request.app.state.config
    texts = check_texts([d.text for d in body.documents])  # refused here, not later in a job
    given = [d.id for d in body.documents]
    ids = None if all(i is None for i in given) else given
    check_ids(ids, len(texts))
    background = body.background if body.background is not None else len(texts) > cfg.sync_add_limit
    if not background:
        if len(texts) > cfg.sync_add_limit:
            raise ApiError(400, f"more than {cfg.sync_add_limit} documents: add them as a background job", "background")
        rep = await run_in_threadpool(bank.write, lambda: bank.add(texts, ids, body.on_duplicate))
        return {"object": "add", **rep}
    job = await run_in_threadpool(bank.jobs.submit, texts, ids, body.on_duplicate)
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/v1/banks/{name}/documents")
async def list_documents(request: Request, name: str, offset: int = Query(0, ge=0),
                         limit: int = Query(100, ge=1, le=MAX_LIST)) -> dict[str, Any]:  # fmt: skip
    bank = _bank(request, name)

    def page() -> dict[str, Any]:
        ids = bank.reader.list_ids(offset, limit)
        return {"object": "list", "data": [{"id": i} for i in ids], "offset": offset, "limit": limit,
                "total": bank.reader.stats()["documents"]}  # fmt: skip

    return await run_in_threadpool(page)


@router.get("/v1/banks/{name}/documents/{doc}")
async def get_document(request: Request, name: str, doc: str) -> dict[str, Any]:
    bank = _bank(request, name)

    def read() -> dict[str, Any]:
        d = bank.parse_id(doc)
        return {"object": "document", "id": d, "text": bank.reader.get_text(d)}

    return await run_in_threadpool(read)


@router.put("/v1/banks/{name}/documents/{doc}")
async def update_document(request: Request, name: str, doc: str, body: UpdateDocument) -> dict[str, Any]:
    bank = _bank(request, name)
    if not body.text.strip():
        raise ApiError(400, "the document has no text", "text")

    def update() -> dict[str, Any]:
        d = bank.parse_id(doc)
        return {"object": "document", "id": bank.writer.update(d, body.text), "updated": True}

    return await run_in_threadpool(bank.write, update)


@router.delete("/v1/banks/{name}/documents/{doc}")
async def delete_document(request: Request, name: str, doc: str) -> dict[str, Any]:
    bank = _bank(request, name)

    def delete() -> dict[str, Any]:
        d = bank.parse_id(doc)
        rep = bank.writer.delete([d])
        return {"object": "document", "id": d, "deleted": d in rep.deleted}

    return await run_in_threadpool(bank.write, delete)


@router.post("/v1/banks/{name}/compact")
async def compact(request: Request, name: str) -> dict[str, Any]:
    bank = _bank(request, name)
    return {"object": "compaction", **await run_in_threadpool(bank.write, bank.writer.compact)}


@router.post("/v1/banks/{name}/search")
async def search(request: Request, name: str, body: Search) -> dict[str, Any]:
    """The router's selection for ``query`` (one prefill, no retrieval rounds): per router layer and
    merged (every document any layer selected, by its best score over the layers)."""
    bank = _bank(request, name)
    if not body.query.strip():
        raise ApiError(400, "the query is empty", "query")
    opts = AskOptions(max_new_tokens=1, max_rounds=1, top_k=body.top_k, interleave=False, return_routing=True)
    ticket, deadline = submit(request, bank, body.query, opts, False)
    answered = await wait_answer(ticket, request, deadline)
    routing = answered.answer.rounds[0].routing if answered.answer.rounds else {}
    layers: dict[str, list[dict[str, Any]]] = {}
    best: dict[Any, dict[str, Any]] = {}
    for layer, sel in sorted(routing.items()):
        layers[str(layer)] = []
        for d, score in sel:
            uid = bank.display_id(d)
            layers[str(layer)].append({"id": uid, "score": score})
            hit = best.setdefault(repr(uid), {"id": uid, "score": score, "layers": []})
            hit["score"] = max(hit["score"], score)
            hit["layers"].append(layer)
    merged = sorted(best.values(), key=lambda h: -h["score"])
    return {"object": "search", "query": body.query, "data": merged, "layers": layers}


@router.get("/v1/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    if not JOB_ID.match(job_id):
        raise ApiError(404, f"no job {job_id!r}", "job_id", "job_not_found")
    try:
        return registry_of(request).job(job_id).to_dict()
    except KeyError:
        raise ApiError(404, f"no job {job_id!r}", "job_id", "job_not_found") from None

