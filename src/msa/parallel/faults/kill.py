"""SIGKILL of a writer process at a random moment of add, delete, compact or update."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from msa.memory import BankError, MemoryBank
from msa.parallel.faults.common import Trial, long_text, texts

OPS = ("add", "delete", "compact", "update")
BASE_IDS: list[Any] = [f"s{i}" for i in range(6)] + list(range(100, 106))


def _base(seed: int) -> dict[Any, str]:
    return dict(zip(BASE_IDS, texts(len(BASE_IDS), seed, "base")))


def _commands(op: str, seed: int) -> list[tuple[str, Any]]:
    """The commands of one trial: (name, arguments); the same list is run again after the kill."""
    rng = random.Random(seed)
    if op == "add":
        out = []
        for b in range(4):
            batch = texts(5, seed * 10 + b, "added") + ([long_text(seed * 10 + b)] if b % 2 else [])
            ids = [None if (j + b) % 3 == 0 else f"a{b}-{j}" for j in range(len(batch))]
            out.append(("add", (batch, ids)))
        return out
    if op == "delete":
        return [("delete", [d]) for d in rng.sample(BASE_IDS, 8)]
    if op == "update":
        return [("update", (d, f"updated text {seed} of {d!r}: " + long_text(seed)[: rng.randint(40, 400)]))
                for d in rng.sample(BASE_IDS, 5)]  # fmt: skip
    return [("delete", rng.sample(BASE_IDS, 3)), ("compact", None), ("delete", rng.sample(BASE_IDS, 3)), ("compact", None)]


def _run(bank: MemoryBank, cmd: tuple[str, Any]) -> Any:
    name, arg = cmd
    if name == "add":
        return bank.add_documents(arg[0], arg[1], progress=False).ids
    if name == "delete":
        rep = bank.delete(arg)
        return {"deleted": rep.deleted, "already": rep.already_deleted}
    if name == "update":
        return bank.update(*arg)
    return bank.compact()


def _child(path: str, commands: list, report: str, model, tok) -> None:
    with MemoryBank.open(path, model, tok) as bank, open(report, "a") as f:
        Path(report + ".ready").touch()
        for i, cmd in enumerate(commands):
            result = _run(bank, cmd)
            f.write(json.dumps({"i": i, "result": result}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _verify(path: Path, op: str, seed: int, commands: list, done: dict[int, Any], model, tok) -> str | None:
    """None if the bank after the kill keeps every promise, else what broke."""
    base = _base(seed)
    allowed: dict[Any, set[str]] = {k: {v} for k, v in base.items()}
    id_less: set[str] = set()
    for name, arg in commands:
        if name == "add":
            for t, d in zip(*arg):
                (id_less.add(t) if d is None else allowed.setdefault(d, set()).add(t))  # type: ignore[func-returns-value]
        elif name == "update":
            allowed[arg[0]].add(arg[1])
    with MemoryBank.open(path, model, tok) as bank:
        bank.check()
        docs = dict(bank.documents())
        ids = bank.list_ids()
        if len(ids) != len(set(ids)):
            return f"an id is listed twice: {ids}"
        by_text: dict[str, list] = {}
        for d, t in docs.items():
            by_text.setdefault(t, []).append(d)
            if t not in allowed.get(d, id_less):
                return f"document {d!r} holds a text it was never given (partial?): {t[:60]!r}"
        if any(len(v) > 1 for v in by_text.values()):
            return f"a text is stored twice: {[v for v in by_text.values() if len(v) > 1]}"
        for i, result in done.items():  # acknowledged commands hold
            name, arg = commands[i]
            if name == "add":
                for t, d in zip(arg[0], result):
                    if docs.get(d) != t:
                        return f"acknowledged add of {d!r} is missing"
            if name == "delete" and any(d in docs for d in arg):
                return f"acknowledged delete of {arg} came back"
            if name == "update" and docs.get(arg[0]) != arg[1] and not any(
                    commands[j][0] == "update" and commands[j][1][0] == arg[0] for j in range(i + 1, len(commands))):  # fmt: skip
                return f"acknowledged update of {arg[0]!r} is lost"
        for cmd in commands:  # the re-run completes without errors or duplicates
            _run(bank, cmd)
        docs = dict(bank.documents())
        if len(set(docs.values())) != len(docs):
            return "the re-run stored a text twice"
        bank.check()
    return None


def _base_bank(path: Path, s: int, model, tok) -> None:
    with MemoryBank.create(path, model, tok, max_doc_tokens=64, segment_tokens=200, compact_chunks=64) as bank:
        base = _base(s)
        bank.add(list(base.values()), list(base), progress=False)


def _duration(work: Path, op: str, seed: int, model, tok) -> float:
    """Seconds the commands of ``op`` take uninterrupted (the range of the random kill delays)."""
    path = work / f"calibrate-{op}"
    _base_bank(path, seed, model, tok)
    start = time.perf_counter()
    with MemoryBank.open(path, model, tok) as bank:
        for cmd in _commands(op, seed):
            _run(bank, cmd)
    return time.perf_counter() - start


def run(work: Path, trials: int, seed: int, model, tok) -> list[Trial]:
    """``trials`` kills, the operations in turn, each after a random delay (from the moment the
    child starts its commands) within the time they take uninterrupted (measured first)."""
    ctx = mp.get_context("fork")  # the child shares the loaded model: it starts at once
    spans = {op: _duration(work, op, seed, model, tok) for op in OPS}
    out = []
    for t in range(trials):
        op, s = OPS[t % len(OPS)], seed + t
        path, report = work / f"kill-{t}", work / f"kill-{t}.jsonl"
        _base_bank(path, s, model, tok)
        commands = _commands(op, s)
        delay = random.Random(s).uniform(0.0, spans[op])
        start = time.perf_counter()
        child = ctx.Process(target=_child, args=(str(path), commands, str(report), model, tok))
        child.start()
        ready = Path(str(report) + ".ready")
        while not ready.exists() and child.is_alive() and time.perf_counter() - start < 60:
            time.sleep(0.002)
        time.sleep(delay)  # from the moment the commands begin
        finished = not child.is_alive()
        if not finished:
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
        done = {}
        if report.exists():
            done = {r["i"]: r["result"] for r in map(json.loads, report.read_text().splitlines())}
        try:
            problem = _verify(path, op, s, commands, done, model, tok)
        except BankError as e:
            problem = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - a fault suite reports every failure
            problem = f"traceback: {type(e).__name__}: {e}"
        out.append(Trial("kill", f"{op} after {delay:.2f}s ({len(done)}/{len(commands)} acknowledged"
                         f"{', finished' if finished else ''})", problem is None, problem or "",
                         time.perf_counter() - start))  # fmt: skip
    return out
