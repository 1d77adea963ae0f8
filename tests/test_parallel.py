"""Memory Parallel over 2, 3 and 4 CPU processes (gloo): equal to one process, failures named by rank.

Each ``_launch`` starts W spawned processes once and runs several checks in them (process start is
the expensive part); workers write their results to files the test compares with the single-process
reference computed here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import build_tiny_model, build_tiny_tokenizer
from msa.engine import Engine
from msa.memory import MemoryBank
from msa.parallel import RankFailureError, ShardMissingError, assign_segments, merge_topk
from msa.parallel.encode import split_groups

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
QUESTIONS = ["Where was Alice born?", "Who is a pilot in Berlin?"]
TIMEOUT_S = 8.0


def make_texts(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = int(torch.randint(3, 30, (1,), generator=g))
        out.append(f"Doc {seed}-{i}: " + " ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)))
    return out


def route_queries(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 7, cfg.num_attention_heads, cfg.head_dim, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, :2] = False
    return q, mask


def reference_routing(bank: MemoryBank, model) -> dict:
    """Per router layer: selected bank ids, scores and fetched K/V of the single-process access."""
    acc = bank.snapshot()
    q, mask = route_queries(model.config)
    out = {}
    for layer in model.router_layers:
        r = acc.route(layer, q, mask, 3)
        k, v, valid = acc.fetch(layer, r.docs)
        out[layer] = (acc.ids(r.docs), r.scores, k, v, valid)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, tasks: list, timeout_s: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from msa.parallel import DistributedBankView, distributed_engine, init_distributed, parallel_add

    ctx = init_distributed("gloo", timeout_s=timeout_s, heartbeat_s=0.25)
    model, tok = build_tiny_model(), build_tiny_tokenizer()
    results: dict = {}
    for name, kind, arg in tasks:
        t0 = time.perf_counter()
        try:
            if kind == "route":
                with DistributedBankView(arg, ctx, model, tok) as view:
                    acc = view.snapshot()
                    ids = acc.slot_ids
                    q, mask = route_queries(model.config)
                    res = {}
                    for layer in model.router_layers:
                        r = acc.route(layer, q, mask, 3)
                        k, v, valid = acc.fetch(layer, r.docs)
                        gid = torch.where(r.docs >= 0, ids[r.docs.clamp(min=0)], -1)
                        res[layer] = (gid, r.scores, k, v, valid)
                    results[name] = res
            elif kind == "exchange":  # the hot path: two tensor all-gathers per router layer, nothing else
                results[name] = exchange_only(ctx, model, tok, arg)
            elif kind == "engine":
                engine = distributed_engine(model, tok, arg, ctx=ctx)
                answers = engine.ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=12, return_routing=True)
                results[name] = [(a.transcript, [r.routing for r in a.rounds]) for a in answers]
                engine.bank.close()
            elif kind == "add":
                path, texts, ids = arg
                results[name] = parallel_add(path, texts, ids, model, tok, ctx)
            elif kind in ("kill", "hang"):
                bank_path, victim, layer_calls = arg
                engine = distributed_engine(model, tok, bank_path, ctx=ctx)
                if rank == victim:
                    inner, calls = engine.bank._access.shard, [0]

                    class Dying:
                        def route(self, *a):
                            calls[0] += 1
                            if calls[0] > layer_calls:
                                if kind == "hang":
                                    time.sleep(timeout_s + 4)
                                os._exit(3)
                            return inner.route(*a)

                        def fetch(self, *a):
                            return inner.fetch(*a)

                    engine.bank._access.shard = Dying()
                engine.ask("Where was Alice born?", max_new_tokens=4)
                results[name] = "no error"
        except Exception as e:
            results[name] = {"error": type(e).__name__, "message": str(e), "seconds": time.perf_counter() - t0,
                             "ranks": getattr(e, "ranks", None), "trace": traceback.format_exc()}  # fmt: skip
            if kind in ("kill", "hang"):
                torch.save(results, Path(out) / f"rank{rank}.pt")
                os._exit(0)  # the group is broken: skip the collective teardown
        torch.save(results, Path(out) / f"rank{rank}.pt")
    ctx.close()


def exchange_only(ctx, model, tok, bank_path: str) -> dict:
    """Route and fetch every router layer with the object collectives, broadcasts, barriers, list
    all-gathers and all-reduces made to raise; returns the per-layer results (as the "route" task)
    and the number of all-gathers."""
    import torch.distributed as dist

    from msa.parallel import DistributedBankView
    from msa.parallel import access as access_mod

    forbidden = ("all_gather_object", "broadcast_object_list", "broadcast", "barrier", "all_gather", "all_reduce")
    with DistributedBankView(bank_path, ctx, model, tok) as view:
        acc = view.snapshot()
        saved, calls = {n: getattr(dist, n) for n in forbidden}, [0]
        inner = access_mod._all_gather

        def counted(*a, **kw):
            calls[0] += 1
            return inner(*a, **kw)

        def refuse(*a, **kw):
            raise AssertionError("a collective other than the all-gathers on the hot path")

        res: dict = {}
        try:
            for n in forbidden:
                setattr(dist, n, refuse)
            access_mod._all_gather = counted
            q, mask = route_queries(model.config)
            for layer in model.router_layers:
                r = acc.route(layer, q, mask, 3)
                k, v, valid = acc.fetch(layer, r.docs)
                gid = torch.where(r.docs >= 0, acc.slot_ids[r.docs.clamp(min=0)], -1)
                res[layer] = (gid, r.scores, k, v, valid)
        finally:
            for n, f in saved.items():
                setattr(dist, n, f)
            access_mod._all_gather = inner
    return {"layers": res, "all_gathers": calls[0]}


def _launch(world: int, tasks: list, out: Path, deadline_s: float = 150.0, expect_dead: tuple = ()) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    spawn = mp.get_context("spawn")
    port = free_port()
    procs = [spawn.Process(target=_worker, args=(r, world, port, str(out), tasks, TIMEOUT_S)) for r in range(world)]
    for p in procs:
        p.start()
    end = time.monotonic() + deadline_s
    for p in procs:
        p.join(max(1.0, end - time.monotonic()))
    alive = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, f"ranks {alive} still running after {deadline_s}s"
    codes = [p.exitcode for p in procs]
    assert all(c == 0 for r, c in enumerate(codes) if r not in expect_dead), codes
    return [torch.load(out / f"rank{r}.pt", weights_only=False) if (out / f"rank{r}.pt").exists() else {}
            for r in range(world)]  # fmt: skip


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    """ab: segment A (8 docs) + B (1 doc); abc: + C (3 docs), one A document deleted."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("parallel")
    model, tok = build_tiny_model(), build_tiny_tokenizer()
    with MemoryBank.create(root / "ab", model, tok, segment_tokens=1 << 20) as bank:
        bank.add(make_texts(8, 1))
        bank.add(["Alice was born in Paris and works as a chemist."])
    shutil.copytree(root / "ab", root / "abc")
    with MemoryBank.open(root / "abc", model, tok) as bank:
        bank.add(make_texts(3, 2))
        bank.delete(bank.ids()[2])
    return root, model, tok


def reference(path: Path, model, tok) -> tuple[dict, list]:
    with MemoryBank.open(path, model, tok, readonly=True) as bank:
        routing = reference_routing(bank, model)
        answers = Engine(model, tok, bank).ask_batch(QUESTIONS, max_rounds=2, max_new_tokens=12, return_routing=True)
    return routing, [(a.transcript, [r.routing for r in a.rounds]) for a in answers]


def check_equal(got: dict, ref_routing: dict, got_answers, ref_answers) -> None:
    for layer, (ids, scores, k, v, valid) in ref_routing.items():
        g_ids, g_scores, g_k, g_v, g_valid = got[layer]
        assert torch.equal(g_ids, ids), (layer, g_ids, ids)
        assert torch.equal(g_scores, scores)
        assert torch.equal(g_valid, valid) and torch.equal(g_k, k) and torch.equal(g_v, v)
    assert got_answers == ref_answers


def test_assignment_and_merge():
    assert assign_segments([5, 1, 9, 0, 4], 2) == [[1, 2], [0, 4]]
    assert assign_segments([3], 3) == [[0], [], []]
    loads = [sum(c for i, c in enumerate([7, 3, 3, 2, 2, 2]) if i in s) for s in assign_segments([7, 3, 3, 2, 2, 2], 3)]
    assert max(loads) - min(loads) <= 7
    inf = float("-inf")
    docs, sc = merge_topk(torch.tensor([[1.0, inf, 2.0, 1.0, inf, inf]]), torch.tensor([[5, -1, 9, 3, -1, -1]]), 4)
    assert docs.tolist() == [[9, 3, 5, -1]] and sc[0, :3].tolist() == [2.0, 1.0, 1.0]
    assert split_groups([10, 10, 10, 10], 2) == [(0, 2), (2, 4)]
    assert split_groups([10], 3) == [(0, 1), (1, 1), (1, 1)]


def test_fetch_plan_rows_follow_owner_blocks():
    """Slots 0..4 with chunks 2,1,3,1,2 on ranks 1,0,1,2,0: each rank's block holds its selected
    documents in slot order; rows come back in the requested order, duplicates and -1 included."""
    from msa.parallel import ShardLayout
    from msa.parallel.access import FetchPlan

    lay = ShardLayout.build(torch.arange(5), torch.tensor([1, 0, 1, 2, 0]), torch.tensor([2, 1, 3, 1, 2]), 3)
    plan = FetchPlan.build(lay, torch.tensor([[2, 0, -1], [4, 2, 1]]))
    # rank 0 sends slots 1, 4 (3 chunks), rank 1 slots 0, 2 (5 chunks), rank 2 nothing: blocks of 5
    assert plan.block == 5 and plan.sel.tolist() == [0, 1, 2, 4]
    # gathered rows: slot 1 -> 0, slot 4 -> 1..2, slot 0 -> 5..6, slot 2 -> 7..9
    assert plan.index.tolist() == [[7, 8, 9, 5, 6, 0], [1, 2, 7, 8, 9, 0]]
    assert plan.valid.tolist() == [[True] * 5 + [False], [True] * 6]
    empty = FetchPlan.build(lay, torch.full((2, 3), -1))
    assert empty.block == 0 and empty.index.shape == (2, 0)


def test_three_ranks_empty_and_single_document_shard(banks, tmp_path):
    """W=3 over segments A, B: rank 1 holds one document, rank 2 nothing. Also parallel encode, a
    missing shard file, and a rank killed mid-ask."""
    root, model, tok = banks
    ref_routing, ref_answers = reference(root / "ab", model, tok)
    texts = make_texts(7, 3)
    with MemoryBank.create(tmp_path / "single", model, tok, segment_tokens=60) as single:
        single_ids = single.add(texts)
    MemoryBank.create(tmp_path / "par", model, tok, segment_tokens=60).close()
    broken = tmp_path / "broken"
    shutil.copytree(root / "ab", broken)
    with MemoryBank.open(broken, readonly=True) as b, b.catalog.read() as c:
        lost = [s.file for s in c.segments()][1]
    (broken / "segments" / lost).unlink()
    tasks = [("route", "route", str(root / "ab")), ("engine", "engine", str(root / "ab")),
             ("add", "add", (str(tmp_path / "par"), texts, None)), ("missing", "route", str(broken)),
             ("kill", "kill", (str(root / "ab"), 2, 1))]  # fmt: skip
    t0 = time.monotonic()
    res = _launch(3, tasks, tmp_path / "out", expect_dead=(2,))
    for r in range(3):
        if r < 2 or "route" in res[r]:
            check_equal(res[r]["route"], ref_routing, res[r]["engine"], ref_answers)
            assert res[r]["add"] == single_ids
            miss = res[r]["missing"]
            assert miss["error"] == "ShardMissingError" and lost in miss["message"], miss
    for r in (0, 1):
        kill = res[r]["kill"]
        assert kill["error"] == "RankFailureError" and kill["ranks"] == [2], kill
        assert "rank(s) 2" in kill["message"] and kill["seconds"] < 30, kill
    with MemoryBank.open(tmp_path / "single", model, tok) as a, MemoryBank.open(tmp_path / "par", model, tok) as b:
        assert a.ids() == b.ids() and [a.get_text(i) for i in a.ids()] == [b.get_text(i) for i in b.ids()]
        assert a.stats()["segments"] == b.stats()["segments"] > 1
        ra, rb = reference_routing(a, model), reference_routing(b, model)
        for layer in ra:
            assert torch.equal(ra[layer][0], rb[layer][0])
            torch.testing.assert_close(ra[layer][2], rb[layer][2])
        b.check()
    print(f"3-rank run took {time.monotonic() - t0:.1f}s")


def test_two_ranks_several_segments_per_shard(banks, tmp_path):
    """W=2 over A, B, C (one deleted document): rank 1 holds B and C. Rank 0 (the store host) dies."""
    root, model, tok = banks
    ref_routing, ref_answers = reference(root / "abc", model, tok)
    tasks = [("route", "route", str(root / "abc")), ("engine", "engine", str(root / "abc")),
             ("kill", "kill", (str(root / "abc"), 0, 1))]  # fmt: skip
    res = _launch(2, tasks, tmp_path / "out", expect_dead=(0,))
    check_equal(res[1]["route"], ref_routing, res[1]["engine"], ref_answers)
    kill = res[1]["kill"]
    assert kill["error"] == "RankFailureError" and kill["ranks"] == [0] and kill["seconds"] < 30, kill


def test_four_ranks_exchange_is_two_all_gathers_per_layer(banks, tmp_path):
    """W=4 over A, B, C (rank 3 holds nothing): equal to one process, and per router layer the
    exchange is exactly one all-gather of candidates and one of chunk blocks (no object collective)."""
    root, model, tok = banks
    ref_routing, ref_answers = reference(root / "abc", model, tok)
    res = _launch(4, [("exchange", "exchange", str(root / "abc")), ("engine", "engine", str(root / "abc"))],
                  tmp_path / "out")  # fmt: skip
    for r in range(4):
        assert "error" not in res[r]["exchange"], res[r]["exchange"]
        check_equal(res[r]["exchange"]["layers"], ref_routing, res[r]["engine"], ref_answers)
        assert res[r]["exchange"]["all_gathers"] == 2 * len(model.router_layers)


def test_missing_file_error_names_file():
    e = ShardMissingError({1: [("/b/segments/seg-x.safetensors", "segment file is missing")]})
    assert "seg-x" in str(e) and "rank 1" in str(e) and isinstance(e, Exception)
    assert RankFailureError([2], "route", "dead").ranks == [2]


def test_hung_rank_is_named(banks, tmp_path):
    """A rank that hangs inside routing (alive, heartbeat running) is named once the timeout expires."""
    root, _, _ = banks
    res = _launch(2, [("kill", "hang", (str(root / "ab"), 1, 1))], tmp_path / "out", expect_dead=(1,))
    hang = res[0]["kill"]
    assert hang["error"] == "RankFailureError" and hang["ranks"] == [1] and "hung" in hang["message"], hang
    assert hang["seconds"] < TIMEOUT_S + 5, hang


def test_bench_quick_under_torchrun(tmp_path):
    """bench/parallel.py at W=1 (plain python) and W=2 (torchrun): the random bank is the same at
    both world sizes, so the W=2 selection equals the W=1 baseline slot for slot."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    bench = [str(root / "bench" / "parallel.py"), "--quick", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    single = subprocess.run([sys.executable, *bench], capture_output=True, text=True, timeout=120, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    base = tmp_path / "parallel_cpu_w1_20K_quick.json"
    assert json.loads(base.read_text())["single_process_ttft_ms"] > 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *bench, "--baseline", str(base)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "parallel_cpu_w2_20K_quick.json").read_text())
    assert res["world"] == 2 and res["ttft_ms"] > 0 and "RANDOM-TENSOR" in out.stdout
    assert len(res["peak_device_gb_per_rank"]) == 2 and 0 < res["exchange_share_of_ttft"] < 1
    assert len(res["selection"]) == res["router_layers"] and res["selection_equal_to_baseline"] is True


def test_train_multi_aggregates_ranks():
    """bench/train_multi.py: global token counts are taken once, per-rank counts summed; the slowest
    rank sets the step time; MFU per GPU and scaling efficiency against the W=1 result."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train_multi", Path(__file__).resolve().parents[1] / "bench" / "train_multi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    rank = {"matmul_bf16_flops": 1e15, "non_embedding_params": 1e9, "peak_memory_gb": 60.0, "lm_loss_last": 3.0}
    one = mod.aggregate([{**rank, "tokens_per_step": 1000.0, "step_time_s": 1.0}], 1, None)
    assert one["tokens_per_s_per_gpu"] == 1000.0 and one["mfu_per_gpu"] == 6e12 / 1e15
    both = [{**rank, "tokens_per_step": 2000.0, "step_time_s": t} for t in (1.0, 1.25)]
    two = mod.aggregate(both, 2, one)
    assert two["tokens_counted"] == "global" and two["tokens_per_s"] == 1600.0
    assert two["scaling_efficiency"] == 0.8
    summed = mod.aggregate([{**rank, "tokens_per_step": n, "step_time_s": 1.0} for n in (900.0, 1100.0)], 2, one)
    assert summed["tokens_counted"] == "per rank, summed" and summed["scaling_efficiency"] == 1.0
