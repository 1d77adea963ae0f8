"""Router capacity probe (issue 16): can a wider router separate full names on the same features?

The routing features of a router layer are its input hidden states; they do not depend on memory.
This script takes them from a trained model (documents as encoded, requests as the engine routes
them: a name in the model's prompt layout), keeps them frozen, and trains router projections of
several shapes on names of training worlds, with every other document of a large memory as a
negative. It reports recall@1/@16 of the gold document for bare-name requests on an unseen world,
against the model's own router on the same features (which must equal the engine's routing).

    python bench/router_probe.py --model msa-bios-small --people 16384 --out bench/results/router_probe.json

If a wider router reaches a much higher recall@1 on frozen features, router width is a lever worth
retraining for; if not, the features (the layers below the router) are the limit. ``--layer L`` takes
the features at the input of layer L instead (a router placed there: the layers below it then run
without memory, as the requests' features are computed here), and probes new routers only where L
is not one of the model's router layers.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time

import torch
import torch.nn.functional as F

import msa.functional as MF
from msa.data.bios import BiosConfig, BiosWorld
from msa.model import MSAForCausalLM, resolve_model_path
from msa.model.modeling import ENCODE_PAD
from msa.engine.generation import left_pad
from msa.prompt import QUERY, TEMPLATE, encode_segments, prompt_format, query_segments
from msa.tokenizer import load_tokenizer

log = logging.getLogger("router_probe")


class _Grab:
    """Forward pre-hook on a router layer's attention: keeps its input (the routing features)."""

    def __init__(self, attn):
        self.calls = []
        self.handle = attn.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls.append((args[0].detach(), args[3]))


@torch.no_grad()
def doc_features(model, grab, tok, texts: list[str], chunk: int, batch: int = 256):
    """Chunk-mean-pooled routing features of documents: ([C, H] float, [C] long doc index)."""
    feats, owner = [], []
    for s in range(0, len(texts), batch):
        ids = [tok.encode(t, add_special_tokens=False) for t in texts[s:s + batch]]
        grab.calls.clear()
        model.encode(ids)  # one call per padded-length group, in the order encode() sorts them
        pad = [-(-len(d) // ENCODE_PAD) * ENCODE_PAD for d in ids]
        order = torch.tensor(sorted(range(len(ids)), key=lambda i: (pad[i], i)))
        done = 0
        for x, ctx in grab.calls:
            flat = x.flatten(0, 1).index_select(0, ctx.tokens)[:, None, :]
            pooled, cdoc = MF.chunk_mean_pool(flat.float(), ctx.lengths, chunk)
            feats.append(pooled[:, 0])
            owner.append(order[cdoc.cpu() + done] + s)
            done += len(ctx.lengths)
    return torch.cat(feats), torch.cat(owner)


def requests(tok, fmt, texts: list[str]):
    """Requests in the engine's round-1 layout, left-padded: ids, attention mask, routing-query mask [Q, T]."""
    seqs = [encode_segments(tok, query_segments(fmt, t)) for t in texts]
    ids, att = left_pad([q for q, _ in seqs])
    dids, _ = left_pad([d for _, d in seqs], pad=TEMPLATE)
    return ids, att, att & (dids == QUERY)


@torch.no_grad()
def query_features(model, grab, tok, fmt, texts: list[str], batch: int = 512):
    """Routing features of requests as the engine routes them: ([Q, T, H] float left-padded, [Q, T] mask)."""
    ids, att, qm = requests(tok, fmt, texts)
    xs = []
    for s in range(0, len(texts), batch):
        grab.calls.clear()
        model.prefill(ids[s:s + batch], att[s:s + batch], qm[s:s + batch], memory=None, last_only=True)
        xs.append(grab.calls[0][0].float())
    return torch.cat(xs), qm


class Router(torch.nn.Module):
    """Router projections of one shape: score(doc) = ``reduce`` (mean or max) over its chunks of the
    mean over heads and query tokens of cos(q_t,h, k_c,g(h)) (the model's cosine routing)."""

    def __init__(self, hidden: int, hq: int, hkv: int, d: int, reduce: str = "mean"):
        super().__init__()
        self.hq, self.hkv, self.d, self.reduce = hq, hkv, d, reduce
        self.wq = torch.nn.Linear(hidden, hq * d, bias=False)
        self.wk = torch.nn.Linear(hidden, hkv * d, bias=False)

    @classmethod
    def of_layer(cls, attn, hidden: int, reduce: str) -> "Router":
        """A copy of a router layer's own projections (``attn``: its MemorySparseAttention)."""
        r = cls(hidden, attn.num_heads, attn.num_kv_heads, attn.head_dim, reduce)
        r.wq.weight.data.copy_(attn.router_q_proj[0].weight.float())
        r.wk.weight.data.copy_(attn.router_k_proj[0].weight.float())
        return r

    def keys(self, feats):  # [C, H] -> [C, Hkv, D] normalised
        return F.normalize(self.wk(feats).view(-1, self.hkv, self.d), dim=-1)

    def query(self, x, m):  # [Q, T, H], [Q, T] -> [Q, Hkv, D]: mean over group heads and tokens of unit q
        q = F.normalize(self.wq(x).view(*x.shape[:2], self.hkv, self.hq // self.hkv, self.d), dim=-1)
        q = q.mean(3) * m[..., None, None]
        return q.sum(1) / m.sum(1).clamp_min(1)[:, None, None]

    def doc_scores(self, q, k, owner, n_docs):  # -> [Q, N]
        s = torch.einsum("qgd,cgd->qc", q, k) / self.hkv
        return MF.reduce_chunks_to_docs(s, owner, n_docs, self.reduce)


def recall(router, qx, qm, gold, feats, owner, n_docs, ks=(1, 16)):
    with torch.no_grad():
        k = router.keys(feats)
        hits = {kk: 0 for kk in ks}
        for s in range(0, len(gold), 256):
            sc = router.doc_scores(router.query(qx[s:s + 256], qm[s:s + 256]), k, owner, n_docs)
            top = sc.topk(max(ks), dim=1).indices
            for kk in ks:
                hits[kk] += int((top[:, :kk] == gold[s:s + 256, None]).any(1).sum())
    return {f"recall@{kk}": hits[kk] / len(gold) for kk in ks}


def train(router, data, steps: int, lr: float, tau: float, batch: int, memory: int, log_every: int = 100):
    """InfoNCE of ``batch`` random queries over a memory of their gold documents and random others
    (``memory`` documents in all)."""
    qx, qm, gold, feats, owner, n_docs = data
    opt = torch.optim.Adam(router.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        pick = torch.randint(0, len(gold), (batch,), generator=g)
        docs = gold[pick]
        in_mem = torch.zeros(n_docs, dtype=torch.bool)
        in_mem[torch.randperm(n_docs, generator=g)[:memory]] = True
        in_mem[docs] = True
        mem = in_mem.nonzero().squeeze(-1)
        chunk_keep = in_mem[owner]
        remap = torch.full((n_docs,), -1, dtype=torch.long)
        remap[mem] = torch.arange(len(mem))
        k = router.keys(feats[chunk_keep])
        sc = router.doc_scores(router.query(qx[pick], qm[pick]), k, remap[owner[chunk_keep]], len(mem))
        loss = F.cross_entropy(sc / tau, remap[docs])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0:
            log.info("step %d loss %.3f", step, loss.item())
    return router


@torch.no_grad()
def check_against_model(model, tok, fmt, test, n: int = 512, q: int = 64) -> None:
    """The probe's scoring with the model's own router equals the model's routing (first n documents)."""
    qx, qm, gold, feats, owner, _ = test
    attn = model.model.layers[model.router_layers[0]].self_attn
    r = Router.of_layer(attn, model.config.hidden_size, model.config.msa.chunk_reduce_method)
    keep = owner < n
    ours = r.doc_scores(r.query(qx[:q], qm[:q]), r.keys(feats[keep]), owner[keep], n).topk(4).indices
    from msa.data.bios import BiosConfig, BiosWorld

    w = BiosWorld(BiosConfig(num_people=test[5], seed=7))
    mem = model.encode([tok.encode(fmt.document.format(gid=i, text=t), add_special_tokens=False)
                        for i, t in enumerate(w.documents(range(n)))])  # fmt: skip
    out = model.prefill(*requests(tok, fmt, w.names(0, q)), memory=mem, last_only=True, top_k=4)
    theirs = out.routings[model.router_layers[0]].docs
    agree = float((ours[:, 0] == theirs[:, 0]).float().mean())
    log.info("probe vs model routing, top-1 agreement on %d requests over %d documents: %.3f", q, n, agree)
    if agree < 0.95:
        raise SystemExit(f"the probe does not reproduce the model's routing (top-1 agreement {agree:.3f})")


def _new_routers(args, model, tr, test_eval, reduce: str, rows: list) -> None:
    """Train and evaluate a fresh router of every ``--shapes`` shape on the frozen features."""
    for shape in filter(None, args.shapes.split(",")):
        hq, hkv, d = (int(v) for v in shape.split("x"))
        r = Router(model.config.hidden_size, hq, hkv, d, reduce)
        rows.append({"probe": f"new router {shape} (Hq x Hkv x D)", "reduce": reduce, "steps": args.steps,
                     **test_eval(train(r, tr, args.steps, 1e-3, 0.1, 256, args.memory))})  # fmt: skip
        log.info("%s", rows[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="msa-bios-small")
    ap.add_argument("--people", type=int, default=16384, help="people of the unseen evaluation world (seed 7)")
    ap.add_argument("--train-people", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--memory", type=int, default=8192, help="documents a training step scores")
    ap.add_argument("--shapes", default="8x2x32,8x8x32,8x8x64,16x16x64", help="Hq x Hkv x D per probe")
    ap.add_argument("--reduce", default="mean,max", help="chunk -> document reductions to probe")
    ap.add_argument("--cache", default=None, help="keep the features in this .pt file (reused if present)")
    ap.add_argument("--mix", action="store_true", help="train on names, lower-cased names and questions")
    ap.add_argument("--lr", type=float, default=3e-4, help="learning rate of the model's router trained on")
    ap.add_argument("--save", default=None, help="write the model with the router trained on here (first reduction)")
    ap.add_argument("--layer", type=int, default=None, help="features at this layer's input (default: the first router layer)")
    ap.add_argument("--out", default="bench/results/router_probe.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    path = resolve_model_path(args.model)
    model = MSAForCausalLM.from_pretrained(path).eval()
    tok = load_tokenizer(path)
    fmt = prompt_format(model.config.policy.prompt_format)
    layer = model.router_layers[0] if args.layer is None else args.layer
    if not 0 <= layer < len(model.model.layers):
        raise SystemExit(f"--layer must be in [0, {len(model.model.layers)}), got {layer}")
    own = layer == model.router_layers[0]  # the model's own router reads these features
    if layer > max(model.router_layers):  # encode() stops after the last router layer: run on to this one
        run = model.model.run
        model.model.run = lambda ids, pos, ctx, num_layers=None: run(ids, pos, ctx, max(num_layers or 0, layer + 1))
    attn = model.model.layers[layer].self_attn
    grab = _Grab(attn)
    chunk = model.config.msa.chunk_size

    def world(seed, n, mix: bool = False):
        """Documents and requests of a world; with ``mix`` the requests are every name, a quarter of the
        names lower-cased and a single-hop question (training wordings) about every person."""
        w = BiosWorld(BiosConfig(num_people=n, seed=seed))
        t0 = time.time()
        texts = [fmt.document.format(gid=i, text=t) for i, t in enumerate(w.documents(range(n)))]
        feats, owner = doc_features(model, grab, tok, texts, chunk)
        people = list(range(n))
        queries = w.names(0, n)
        if mix:
            low = people[::4]
            queries += [w.name(i).lower() for i in low] + [w.question(i, "single", wording="train").text for i in people]
            people += low + people
        qx, qm = query_features(model, grab, tok, fmt, queries)
        log.info("world seed %d: %d people, %d chunks, %d requests, %.0f s", seed, n, len(feats), len(queries), time.time() - t0)
        return qx, qm, torch.tensor(people), feats, owner, n

    import os

    if args.cache and os.path.exists(args.cache):
        test, tr = torch.load(args.cache)
    else:
        test, tr = world(7, args.people), world(1234, args.train_people, args.mix)
        if args.cache:
            torch.save((test, tr), args.cache)
    ev = torch.randperm(args.people)[:1000]
    test_eval = lambda r: recall(r, test[0][ev], test[1][ev], ev, test[3], test[4], test[5])  # noqa: E731
    if own:
        check_against_model(model, tok, fmt, test)
    rows = []
    for reduce in args.reduce.split(","):
        if not own:
            _new_routers(args, model, tr, test_eval, reduce, rows)
            continue
        base = Router.of_layer(attn, model.config.hidden_size, reduce)
        rows.append({"probe": "the model's router, as trained", "reduce": reduce, **test_eval(base)})
        log.info("%s", rows[-1])
        rows.append({"probe": "the model's router, trained on here", "reduce": reduce, "steps": args.steps,
                     **test_eval(train(base, tr, args.steps, args.lr, 0.1, 256, args.memory))})  # fmt: skip
        log.info("%s", rows[-1])
        if args.save and reduce == args.reduce.split(",")[0]:
            attn.router_q_proj[0].weight.data.copy_(base.wq.weight.data)
            attn.router_k_proj[0].weight.data.copy_(base.wk.weight.data)
            model.config.msa.chunk_reduce_method = reduce
            model.save_pretrained(args.save)
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                shutil.copy(path / f, args.save)
            log.info("wrote %s", args.save)
        _new_routers(args, model, tr, test_eval, reduce, rows)
    grab.handle.remove()
    out = {"model": args.model, "layer": layer, "eval_people": args.people, "eval_questions": len(ev),
           "train_people": args.train_people, "memory_per_step": args.memory, "rows": rows}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
