"""msa-bios-tiny: a small MSA model trained from scratch on the bios world (one GPU, minutes).

    msa train bios_tiny [key=value ...]
    python bench/train_shipped.py --reading-steps 8000 --reading-target 0.9 --reading-max-share 0.55 \
        --minutes 20 --docs 16,32,32 data.micro_batch_size=64 data.workers=12
                                                   (trains, evaluates, writes the shipped files)

The shipped model took three stages on one H200 (src/msa/assets/msa-bios-tiny/README.md has the
commands): a reading stage (3500 steps), this recipe with doc_choice="routed" (1568 steps), then
this recipe as it is now, "named", from that model (890 steps).
    bash bench/device_train_eval.sh 17 "A|data.workers=6" ...   (variants side by side + scaling run)

Choices, each measured (bench/NOTES_training.md; "unseen" = held-out people of a world the model
never saw, where memorising names cannot help):
  * prompt_format="question": the routing query is the question alone. In the official turn ~31 of
    ~35 routing tokens are fixed template text and a router trained from scratch collapses to uniform
    scores (aux loss = ln N) within 100 steps; with the question alone (CPU probe, 2 layers, hidden 64,
    8 docs): unseen recall@1 0.34 at init -> 0.97 at 500 steps (chance 0.125).
  * chunk_reduce_method="mean": with whole documents (~12 chunks) the official max over chunks
    collapsed like the template did (the best of 12 random chunks beats the name chunk); mean over
    chunks, same probe with whole documents: recall@1 0.30 at init -> 0.75 at 400 steps.
  * 4 layers, router at layer 1 only, aux loss on it (``aux_layers="all"``; the official rule puts
    the aux loss on layers >= L/2 only, and a router at layer 1 of 4 then never trains): routers at
    layers 2-3 of a 4-layer model stayed at chance in the CPU probe; 2 layers route best (H200, 13
    min: unseen top-16 recall 0.94) but leave little for reading; 4 layers learn both.
  * doc_choice="named" with target_format="interleave_named": in a retrieval round the model writes
    who it needs, "[NAME]" (copied from the question, or from the biography it has just read), and the
    engine routes "Who is NAME?" to pick the document. With "routed" (the router's best unread
    document for the question plus the appended text) the second hop of a 2-hop question was almost
    never found: the appended biography dominates the mean-reduced routing query and routes back to
    itself. Same model, 890 more steps with "named" (H200; 2048 unseen people, 50 questions a kind):
    2-hop EM with interleave 0.02 -> 0.78, single-hop 0.86 -> 0.82. The official "generated" choice
    stays unusable for this model: it cannot copy a document id out of pooled memory.
  * recite_fraction=0.2 ("Tell me about NAME." -> the biography) and answer_round_hide_read: reading
    out of appended text is what a small model learns last. A copy task is the lever (CPU, vanilla
    Qwen3 of 4 layers / hidden 128 on answer rounds, held-out answer accuracy at 1500 steps x 16:
    0.06 alone, 0.83 with half the batches copying a document); with the read documents also left out
    of an answer round's memory, the MSA model cannot settle for their blurred pooled copy (same
    size, 4 docs, half recitations: 0.23 at 700 steps with them hidden, 0.03 without).
    bench/train_shipped.py --reading-steps N trains a reading stage first (READING there): on the
    H200 its held-out answer accuracy went 0.08 (250 steps) -> 0.55 (750) -> 0.98 (3500 steps x 64).
  * niah_fraction=0.2: RULER NIAH samples in the stream, so the RULER evaluation is not out of domain.
  * query_reduce_method="mean": with the official max over query tokens only the arg-max token gets
    gradient and a from-scratch router stays at chance.
  * chunk 8 tokens: the document's first chunk is ``<|im_start|>[gid]`` so ids are readable from
    memory, and it routes better than 16 from scratch.
  * one engine round per sequence (interleave_round / interleave_named), 2 in 5 of them answer
    rounds: routing and requests are trained on the query the engine routes with; answer rounds carry
    no routing target (uniform rounds halved the router's signal and its learning speed).
  * main phase aux weight 0.3 (paper: 0.1): set when routing was the slow part; with the fixes above
    the router learns in ~500 steps and reading is the slow part (not re-measured at 0.1 yet).
"""

from msa.config import EnginePolicy, MSAConfig, ModelConfig
from msa.data.bios import BiosConfig
from msa.train.config import (
    CheckpointConfig, CurriculumStage, DataConfig, LoggingConfig, ModelSpec, OptimizerConfig, ParallelConfig,
    Phase, ScheduleConfig, TrainConfig,
)  # fmt: skip


def recipe() -> TrainConfig:
    model = ModelConfig(
        vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=32, rope_theta=10000.0, max_position_embeddings=8192,
        msa=MSAConfig(router_layer_idx="1", top_k_docs=16, pooling_kernel_size=8, query_reduce_method="mean",
                      template_len=4,  # our BPE splits "<|im_start|>user\n" into 4 tokens
                      chunk_reduce_method="mean", routing_cosine=True),
        policy=EnginePolicy(prompt_format="question", doc_choice="routed"),  # trained as "named": "routed" now
    )  # fmt: skip
    return TrainConfig(
        model=ModelSpec(config=model, seed=0, router_init="mirror"),
        data=DataConfig(
            source="bios", world=BiosConfig(num_people=1 << 20, seed=0), kind="mixed", multi_fraction=0.5,
            target_format="interleave_named", answer_round_fraction=0.4, niah_fraction=0.2, recite_fraction=0.2,
            answer_round_hide_read=True,
            curriculum=[CurriculumStage(1500, 16), CurriculumStage(1500, 32), CurriculumStage(0, 64)],
            tokenizer="runs/bios_tiny/tokenizer", tokenizer_vocab=2048, tokenizer_docs=20000,
            micro_batch_size=16, grad_accum=1, workers=6,
        ),
        optimizer=OptimizerConfig(grad_clip=1.0),
        schedule=ScheduleConfig([
            Phase("warmup", steps=1500, lr=2e-3, lm_weight=0.1, aux_weight=1.0, warmup_steps=50),
            Phase("main", steps=4500, lr=1e-3, lm_weight=1.0, aux_weight=0.3, decay="cosine"),
        ]),
        aux_layers="all",
        checkpoint=CheckpointConfig(dir="runs/bios_tiny/ckpt", every=1000),
        logging=LoggingConfig(every=50, metrics_file="runs/bios_tiny/metrics.jsonl"),
        parallel=ParallelConfig(device="auto", autocast="auto"),
    )  # fmt: skip
