"""msa-bios-small, stage D: stage C without its 2-hop loss (issue 16; not yet trained).

    RECIPE=bios_small_d bash bench/device_lease.sh 8      (one device call, carry [".dev-carry"] to resume)

Stage C (recipes/bios_small_c.py, bench/results/issue16_h200_2026-12-01_c) raised single-hop EM at
16K from 0.80 to 0.88 but halved 2-hop (0.78 -> 0.35). Its answer rounds had read up to two extra
documents, shuffled together with the chain, so the model learned to answer from the biography of the
person a question names, which is wrong for "X's mentor". Changes against stage C:
  * ``answer_round_extra_read=1`` with ``answer_round_chain_order``: the hops stay in the order Memory
    Interleave reads them; one extra document falls anywhere among them.
  * ``multi_fraction=0.6``: more 2-hop samples.
  * a lower peak learning rate (2e-4) over the same 800 steps.
Watch gold-only 2-hop reading (bench/reading_probe.py) at every exported checkpoint.
"""

from msa.train.config import Phase, ScheduleConfig, TrainConfig


def recipe() -> TrainConfig:
    from msa.train import load_recipe

    cfg = load_recipe("bios_small_c")
    cfg.data.answer_round_extra_read = 1
    cfg.data.answer_round_chain_order = True
    cfg.data.multi_fraction = 0.6
    cfg.schedule = ScheduleConfig([
        Phase("router", steps=100, lr=2e-4, lm_weight=0.5, aux_weight=1.0, warmup_steps=30),
        Phase("main", steps=700, lr=2e-4, lm_weight=1.0, aux_weight=0.5, decay="cosine"),
    ])  # fmt: skip
    cfg.checkpoint.dir = "runs/bios_small_d/ckpt"
    cfg.logging.metrics_file = "runs/bios_small_d/metrics.jsonl"
    return cfg
