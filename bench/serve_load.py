"""Load test of ``msa serve``: N concurrent clients for T seconds against a server it starts on loopback.

The server serves the shipped ``msa-bios-small`` over a bank of --documents people (a bios world the
model was not trained on, added through the memory API as a background job). Two phases in the same
run, each --seconds long: concurrency 1 (the baseline) and concurrency --clients (default 32). Every
client sends a chat completion (a single- or 2-hop question, greedy, --max-tokens per round), waits
for the answer, and sends the next; a phase stops issuing at its deadline and waits for what is in
flight (bounded by the server's request timeout); --max-requests bounds the count.

Reported per phase: requests, errors (any exception or non-200), questions/s, completion tokens/s,
latency p50/p90/p99/max, exact match of the answers (a sanity check that batching answers as well),
the server's mean batch size (from /metrics). The headline: questions/s at concurrency N over
concurrency 1 (the floor this issue asks: >= 5x on an H200). For reference, the engine alone on the
same bank and device, in this process after the server has stopped: ``Engine.ask`` one question at a
time and ``Engine.ask_batch`` of N, for --engine-seconds each (the server's ceiling without HTTP).

    python bench/serve_load.py [--clients 32] [--seconds 60] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import torch

import msa
from msa.data import BiosConfig, BiosWorld
from msa.eval.metrics import exact_match
from msa.server.process import ServerProcess

log = logging.getLogger("bench.serve_load")
MODEL = "msa-bios-small"
BANK = "load"


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def scrape(url: str) -> dict[str, float]:
    """Sums of the /metrics series by name (labels dropped)."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def phase(client, questions, clients: int, seconds: float, max_requests: int, max_tokens: int, url: str) -> dict:
    before = scrape(url)
    lat: list[float] = []
    tokens, errors, right = 0, [], 0
    issued = 0
    deadline = time.monotonic() + seconds
    t0 = time.monotonic()

    async def worker(w: int) -> None:
        nonlocal tokens, right, issued
        k = w
        while time.monotonic() < deadline and issued < max_requests:
            issued += 1
            q = questions[k % len(questions)]
            k += clients
            start = time.monotonic()
            try:
                r = await client.chat.completions.create(model=f"{MODEL}@{BANK}", max_tokens=max_tokens,
                                                         messages=[{"role": "user", "content": q.text}])  # fmt: skip
            except Exception as e:  # noqa: BLE001 - every failure counts as an error
                errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            lat.append(time.monotonic() - start)
            tokens += r.usage.completion_tokens
            right += exact_match(r.choices[0].message.content or "", q.answer)

    await asyncio.gather(*(worker(w) for w in range(clients)))
    wall = time.monotonic() - t0
    after = scrape(url)
    batches = after.get("msa_batch_size_count", 0) - before.get("msa_batch_size_count", 0)
    asked = after.get("msa_batch_size_sum", 0) - before.get("msa_batch_size_sum", 0)
    return {
        "clients": clients, "seconds": wall, "requests": len(lat), "errors": len(errors), "error_samples": errors[:5],
        "questions_per_s": len(lat) / wall, "completion_tokens_per_s": tokens / wall,
        "latency_s": {"p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
                      "mean": statistics.fmean(lat) if lat else float("nan"), "max": max(lat, default=float("nan"))},
        "exact_match": right / max(1, len(lat)), "mean_batch_size": asked / batches if batches else 0.0,
    }  # fmt: skip


def card(device: str | None) -> str:
    if device and device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__, "msa": msa.__version__}
    for pkg in ("fastapi", "uvicorn", "openai"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "missing"
    return out


async def run(args: argparse.Namespace, url: str, world: BiosWorld) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=args.timeout)
    qs = list(world.iter_questions(args.questions // 2, "single", seed=11))
    qs += list(world.iter_questions(args.questions - len(qs), "multi", seed=11))
    await client.chat.completions.create(model=f"{MODEL}@{BANK}", max_tokens=args.max_tokens,
                                         messages=[{"role": "user", "content": qs[0].text}])  # fmt: skip (warm-up)
    one = await phase(client, qs, 1, args.seconds, args.max_requests, args.max_tokens, url)
    log.info("concurrency 1: %.2f questions/s, p50 %.3f s", one["questions_per_s"], one["latency_s"]["p50"])
    many = await phase(client, qs, args.clients, args.seconds, args.max_requests, args.max_tokens, url)
    log.info("concurrency %d: %.2f questions/s, p50 %.3f s", args.clients, many["questions_per_s"], many["latency_s"]["p50"])
    await client.close()
    return {"concurrency_1": one, f"concurrency_{args.clients}": many,
            "speedup": many["questions_per_s"] / one["questions_per_s"] if one["questions_per_s"] else None}  # fmt: skip


def engine_only(args: argparse.Namespace, bank_path: Path, world: BiosWorld) -> dict:
    """Questions/s of ``Engine.ask_batch`` at batch 1 and at batch --clients, no server in between."""
    from msa.engine import Engine
    from msa.memory import MemoryBank
    from msa.model import MSAForCausalLM, shipped_models
    from msa.tokenizer import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    model = MSAForCausalLM.from_pretrained(MODEL, device=args.device or "cpu")
    tok = load_tokenizer(shipped_models()[MODEL])
    qs = [q.text for q in world.iter_questions(args.questions // 2, "single", seed=11)]
    qs += [q.text for q in world.iter_questions(args.questions - len(qs), "multi", seed=11)]
    out = {}
    with MemoryBank.open(bank_path, model, tok, device=args.device, readonly=True) as bank:
        engine = Engine(model, tok, bank, device=args.device, prompt=bank.prompt)
        engine.ask(qs[0], max_new_tokens=args.max_tokens)  # warm-up
        for b in (1, args.clients):
            done, k, t0 = 0, 0, time.monotonic()
            while time.monotonic() - t0 < args.engine_seconds:
                batch = [qs[(k + j) % len(qs)] for j in range(b)]
                engine.ask_batch(batch, max_new_tokens=args.max_tokens)
                done, k = done + b, k + b
            out[f"batch_{b}"] = {"questions_per_s": done / (time.monotonic() - t0), "questions": done}
    out["speedup"] = out[f"batch_{args.clients}"]["questions_per_s"] / out["batch_1"]["questions_per_s"]
    log.info("engine only: %s", out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    p.add_argument("--max-requests", type=int, default=200_000, help="requests per phase at most")
    p.add_argument("--documents", type=int, default=2048)
    p.add_argument("--questions", type=int, default=512, help="distinct questions, cycled")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--timeout", type=float, default=120.0, help="client and server request timeout (s)")
    p.add_argument("--device", default=None, help="the server's device (e.g. cuda)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    p.add_argument("--engine-seconds", type=float, default=15.0, help="length of each engine-only phase (0: none)")
    p.add_argument("--out", default=None, help="result directory (default bench/results/serve_<card>_<date>)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    world = BiosWorld(BiosConfig(num_people=args.documents, seed=3))
    with tempfile.TemporaryDirectory(prefix="msa-serve-load-") as tmp:
        flags = ["--model", MODEL, "--bank-dir", f"{tmp}/banks", "--max-queue", str(4 * args.clients),
                 "--max-batch", str(args.max_batch), "--request-timeout-s", str(args.timeout),
                 "--sync-add-limit", "1"] + (["--device", args.device] if args.device else [])  # fmt: skip
        env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else None
        server = ServerProcess(flags, Path(tmp) / "server.log", env=env).start()
        try:
            import openai

            c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
            c.post("/banks", body={"name": BANK}, cast_to=object)
            t0 = time.monotonic()
            job = c.post(f"/banks/{BANK}/documents", cast_to=object,
                         body={"documents": [{"text": t} for t in world.iter_documents(0, args.documents)]})  # fmt: skip
            while (job := c.get(f"/jobs/{job['id']}", cast_to=object))["status"] in ("queued", "running"):
                time.sleep(0.2)
            if job["status"] != "done":
                raise SystemExit(f"adding the documents failed: {job['error']}")
            encode_s = time.monotonic() - t0
            result = asyncio.run(run(args, server.url, world))
        finally:
            server.stop()
            log_tail = server.tail(4000)
        if args.engine_seconds > 0:
            result["engine_only"] = engine_only(args, Path(tmp) / "banks" / BANK, world)
    now = datetime.now(timezone.utc)
    name = card(args.device)
    out = {"bench": "serve_load", "card": name, "device": args.device or "cpu", "versions": versions(),
           "date": now.isoformat(timespec="seconds"), "config": vars(args), "encode_s": encode_s,
           "floor": "questions/s at concurrency 1, same run, same server", **result}  # fmt: skip
    if "Traceback" in log_tail:
        out["server_log_tail"] = log_tail
    short = "cpu" if not args.device or args.device == "cpu" else name.replace(" ", "_")
    d = Path(args.out) if args.out else Path(__file__).parent / "results" / f"serve_{short}_{now:%Y-%m-%d}"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"serve_load_c{args.clients}_t{int(args.seconds)}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("card", "speedup")} | {
        k: {m: out[k][m] for m in ("questions_per_s", "errors", "latency_s", "mean_batch_size")}
        for k in out if k.startswith("concurrency_")} | {"engine_only": out.get("engine_only")}, indent=2))  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
