"""Diagnostic (CPU): does a vanilla HF Qwen3 of the probe's size learn to read answers out of the
answer-round token stream that the MSA model sees locally? Separates "reading is slow to learn" from
"something in the MSA model blocks it".

    python bench/reading_vanilla_probe.py --layers 4 --hidden 128 --steps 1500 --lr 1e-3 [--copy-fraction 0.5]

Samples: bios_tiny's answer rounds (single-hop, the gold document appended as text), cut to the
local stream (question, appended document, answer; no memory). Prints the training loss and the
held-out accuracy of the last answer tokens every 100 steps. ``--copy-fraction`` trains that share of
the steps on a copy task instead (a document, a newline, the same document; loss on the repeat).

CPU, prints to the terminal (torch version first). It is the baseline of bench/reading_msa_probe.py
(same size, same metric); chance is about 0.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from msa.train import load_recipe
from msa.train.build import build_collator, build_model, build_source, build_tokenizer
from msa.train.collator import IGNORE

OVERRIDES = ["checkpoint.dir=", "logging.metrics_file=", "data.answer_round_fraction=1.0", "data.niah_fraction=0",
             "data.kind=single", "data.recite_fraction=0", "data.answer_round_hide_read=false"]  # fmt: skip


def batch(collator, source, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[n, T] input ids, labels, attention mask of samples start..start+n-1 (local stream only)."""
    seqs, labs = [], []
    for i in range(start, start + n):
        e = collator.encode(source.sample(i, 1))
        keep = [j for j, d in enumerate(e.doc_ids) if d in (0, -1)]  # QUERY / RESPONSE tokens
        seqs.append([e.input_ids[j] for j in keep])
        labs.append([e.labels[j] for j in keep])
    return _pad(seqs, labs)


def _pad(seqs: list[list[int]], labs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, t = len(seqs), max(map(len, seqs))
    ids = torch.zeros(n, t, dtype=torch.long)
    lab = torch.full((n, t), IGNORE, dtype=torch.long)
    att = torch.zeros(n, t, dtype=torch.long)
    for r, (s, l) in enumerate(zip(seqs, labs)):
        ids[r, : len(s)], lab[r, : len(l)], att[r, : len(s)] = torch.tensor(s), torch.tensor(l), 1
    return ids, lab, att


def copy_batch(tok, source, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[n, T] streams "document, newline, the same document again" with LM targets on the repeat only:
    the induction (copy) signal an answer needs, on every token of the repeat instead of on ~5."""
    seqs, labs = [], []
    nl = tok.encode("\n", add_special_tokens=False)
    for i in range(start, start + n):
        d = tok.encode(source.sample(i, 1).memory[0].text, add_special_tokens=False)
        seqs.append(d + nl + d)
        labs.append([IGNORE] * (len(d) + len(nl)) + d)
    return _pad(seqs, labs)


def last_answer_tokens_right(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows ([B, T, V] logits, [B, T] labels with IGNORE off-target) whose last three target
    tokens before the end-of-turn are all predicted right."""
    pred, tgt = logits[:, :-1].argmax(-1), labels[:, 1:]
    good = 0
    for r in range(len(tgt)):
        pos = (tgt[r] != IGNORE).nonzero().squeeze(-1)[-4:-1]  # before <|im_end|>
        good += bool((pred[r, pos] == tgt[r, pos]).all())
    return good / len(tgt)


def answer_accuracy(model, collator, source, n: int = 64) -> float:
    """Share of held-out samples whose last three answer tokens are all predicted right."""
    ids, lab, att = batch(collator, source, 10_000_000, n)
    with torch.no_grad():
        return last_answer_tokens_right(model(input_ids=ids, attention_mask=att).logits, lab)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--copy-fraction", type=float, default=0.0,
                    help="share of steps that train on repeated documents (copy) instead of answer rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    print(f"torch {torch.__version__} on {platform.processor() or platform.machine()}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_recipe("bios_tiny", OVERRIDES)
    tok = build_tokenizer(cfg.data)
    collator = build_collator(cfg, tok, build_model(cfg.model))
    source = build_source(cfg.data)
    h = args.hidden
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=cfg.model.config.vocab_size, hidden_size=h, intermediate_size=3 * h,
                                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=32, tie_word_embeddings=True))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        copy = (step * 0.6180339887) % 1.0 < args.copy_fraction
        ids, lab, att = (copy_batch(tok, source, step * args.batch, args.batch) if copy
                         else batch(collator, source, step * args.batch, args.batch))  # fmt: skip
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            acc = answer_accuracy(model, collator, source)
            print(f"step {step} loss {loss.item():.4f} held-out answer acc {acc:.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
