"""Typed configuration by concern: the Qwen3-family backbone (``ModelConfig``), what an MSA checkpoint
needs to run (``MSAConfig``) and the keys only training reads (``MSALossConfig``); the last two are the
official ``msa_config`` keys between them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DOC_CHOICES = ("generated", "routed")  # MSAConfig.doc_choice: which documents Memory Interleave reads (msa.engine.choice)
LEGACY_DOC_CHOICES = {"named": "routed"}  # saved by msa-bios-tiny (kept as saved: it is in the model fingerprint)
AUX_LOSS_METHODS = ("INFONCE", "INFONCE_FOCAL", "INFONCE_DECOUPLE", "INFONCE_DECOUPLE_FOCAL", "BCE")
NO_AUX_LOSS = "NONE"  # MSAConfig.aux_loss_method of a checkpoint that names none: no extra scalar, raw-dot routing


@dataclass
class MSAConfig:
    """What an MSA checkpoint needs to run: the ``msa_config`` keys the model reads. Field names and
    meanings are the official ones (MSA_SPEC Part B 1), defaults are the release script's (the MSA-4B
    checkpoint), plus the choices the release hard-codes. The keys only training reads are
    ``MSALossConfig``; reading an official ``msa_config`` (where a missing key reads as None) is
    ``msa.model.checkpoint.official_msa_config``.

    router_layer_idx: "all", "half" (layers L//2..L-1, the paper's "latter half"; written out as the
        explicit list when saved), comma-separated layer indices, or "" (no layer routes).
    top_k_docs: documents selected per query per router layer (honoured at inference too).
    pooling_kernel_size: chunk length P of the mean pooling.
    head_reduce_method / query_reduce_method / chunk_reduce_method: routing reductions.
    decouple_router: separate router_q_proj / router_k_proj (else route with attention Q and pooled K).
    decouple_pooling_mode: stored for the official format; only mean pooling exists.
    aux_loss_method: the routing-loss variant (``AUX_LOSS_METHODS``), or "NONE". It decides the model's
        extra scalar (INFONCE*: a frozen ``temperature`` buffer; BCE: a learnable bias ``b``) and, with
        ``routing_cosine=None``, the routing normalisation.
    infonce_loss_temp: tau (the ``temperature`` scalar's initial value).
    template_len: tokens of the template prefix (official ``<|im_start|>user\\n`` = 3).
    query_position_offset: position of the first query token; None = template_len + top_k_docs (official).
    routing_cosine: cosine routing scores (True) or raw dot / sqrt(D) (False) in training AND inference;
        None = what the official code does for ``aux_loss_method`` (training cosine for INFONCE*,
        inference cosine only for exactly "INFONCE"), needed to reproduce MSA-4B numbers.
    The protocol the engine drives the model with is ``EnginePolicy``.
    """

    router_layer_idx: str = "half"
    top_k_docs: int = 16
    pooling_kernel_size: int = 64
    head_reduce_method: str = "mean"
    query_reduce_method: str = "max"
    chunk_reduce_method: str = "max"
    decouple_router: bool = True
    decouple_pooling_mode: str = "mean"
    aux_loss_method: str = "INFONCE_DECOUPLE"
    infonce_loss_temp: float = 0.1
    template_len: int = 3
    query_position_offset: int | None = None
    routing_cosine: bool | None = True

    def validate(self, num_layers: int | None = None) -> None:
        """Raise ValueError on values the model cannot run with."""
        if not isinstance(self.pooling_kernel_size, int) or self.pooling_kernel_size < 1:
            raise ValueError(f"msa_config.pooling_kernel_size must be a positive int, got {self.pooling_kernel_size!r}")
        if not isinstance(self.top_k_docs, int) or self.top_k_docs < 1:
            raise ValueError(f"msa_config.top_k_docs must be a positive int, got {self.top_k_docs!r}")
        for name, allowed in (
            ("aux_loss_method", (*AUX_LOSS_METHODS, NO_AUX_LOSS)),
            ("head_reduce_method", ("mean", "max")),
            ("query_reduce_method", ("max", "mean", "last")),
            ("chunk_reduce_method", ("max", "mean")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"msa_config.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if num_layers is not None:
            self.router_layers(num_layers)

    def router_layers(self, num_layers: int) -> tuple[int, ...]:
        """Parse ``router_layer_idx`` into sorted layer indices (empty for "")."""
        spec = str(self.router_layer_idx).strip()
        if spec == "all":
            return tuple(range(num_layers))
        if spec == "half":
            return tuple(range(num_layers // 2, num_layers))
        try:
            layers = sorted({int(s) for s in spec.split(",") if s.strip()})
        except ValueError:
            raise ValueError(f"msa_config.router_layer_idx must be 'all', 'half' or 'i,j,...', got {spec!r}") from None
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"router layers {bad} out of range for a model of {num_layers} layers")
        return tuple(layers)

    @property
    def top_k(self) -> int:
        return self.top_k_docs

    @property
    def chunk_size(self) -> int:
        return self.pooling_kernel_size

    @property
    def query_offset(self) -> int:
        """Position of the first query token (official: 3 + 16 = 19)."""
        if self.query_position_offset is not None:
            return self.query_position_offset
        return self.template_len + self.top_k

    @property
    def tau(self) -> float:
        """Temperature, clamped to [0.001, 0.5] as the official code does."""
        return min(max(float(self.infonce_loss_temp), 0.001), 0.5)

    def train_cosine(self) -> bool:
        """Whether routing scores are cosine in training (official: any INFONCE* method)."""
        if self.routing_cosine is not None:
            return self.routing_cosine
        return "INFONCE" in self.aux_loss_method

    def inference_cosine(self) -> bool:
        """Whether routing scores are cosine at inference (official: exactly "INFONCE")."""
        if self.routing_cosine is not None:
            return self.routing_cosine
        return self.aux_loss_method == "INFONCE"

    def to_dict(self, num_layers: int | None = None) -> dict[str, Any]:
        """The fields as ``msa_config`` keys; with ``num_layers``, "half" written out as the layer list."""
        d = dataclasses.asdict(self)
        if num_layers is not None and d["router_layer_idx"] == "half":
            d["router_layer_idx"] = ",".join(str(i) for i in self.router_layers(num_layers))
        return d


@dataclass
class MSALossConfig:
    """The ``msa_config`` keys only training reads (official names and the release script's values).
    Stored with the checkpoint so the official format round-trips.

    aux_loss: the routing loss is on. rewrite_position: training uses the collator's document-wise
    position ids (else global positions). lmloss_weigth (sic), auxloss_weight, recloss_weight,
    ansloss_weight: the official loss weights (LM, routing, reconstruction, answer).
    """

    aux_loss: bool = True
    rewrite_position: bool = True
    lmloss_weigth: float = 1.0
    auxloss_weight: float = 0.1
    recloss_weight: float = 0.0
    ansloss_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EnginePolicy:
    """How the engine drives the model: the protocol it was trained for and the limits of an answer.

    prompt_format: the prompt layout the model was trained with (msa.prompt.PROMPT_FORMATS): "official"
        (the release's, what official checkpoints get) or "question" (ours: the routing query is the
        question alone). The training collator uses it too.
    doc_choice: which documents a Memory Interleave round reads (msa.engine.choice): "generated"
        (official: the ids the model writes) or "routed" (ours: each request the model writes is routed
        on its own and its best unread document is read). A saved "named" (an older name) runs as "routed".
    max_rounds: retrieval rounds at most per question; max_new_tokens: generated tokens per round at most.

    ``prompt_format`` and ``doc_choice`` are saved with the checkpoint, in ``msa_config`` (``STORED``),
    where earlier versions kept them; the limits are the engine's defaults.
    """

    prompt_format: str = "official"
    doc_choice: str = "generated"
    max_rounds: int = 4
    max_new_tokens: int = 256

    STORED = ("prompt_format", "doc_choice")

    def validate(self) -> None:
        """Raise ValueError on values the engine cannot run with."""
        for name, allowed in (("prompt_format", ("official", "question")),
                              ("doc_choice", DOC_CHOICES + tuple(LEGACY_DOC_CHOICES))):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("max_rounds", "max_new_tokens"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """The keys saved with the checkpoint."""
        return {k: getattr(self, k) for k in self.STORED}


@dataclass
class ModelConfig:
    """A Qwen3-family decoder plus its MSA options; field names follow Hugging Face ``Qwen3Config``."""

    vocab_size: int = 151936
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 5_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 262144
    attention_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    msa: MSAConfig = field(default_factory=MSAConfig)
    extra: dict[str, Any] = field(default_factory=dict)
    loss: MSALossConfig = field(default_factory=MSALossConfig)
    policy: EnginePolicy = field(default_factory=EnginePolicy)

    BACKBONE_KEYS = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
        "max_position_embeddings", "attention_bias", "initializer_range", "bos_token_id", "eos_token_id",
        "pad_token_id",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        self.msa.validate(self.num_hidden_layers)
        self.policy.validate()

    @property
    def router_layers(self) -> tuple[int, ...]:
        return self.msa.router_layers(self.num_hidden_layers)

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json content in the official MSA format."""
        d: dict[str, Any] = dict(self.extra)
        d.update({k: getattr(self, k) for k in self.BACKBONE_KEYS})
        d.update(
            model_type="msa",
            architectures=["MSAForCausalLM"],
            hidden_act="silu",
            msa_config={**self.msa.to_dict(self.num_hidden_layers), **self.loss.to_dict(), **self.policy.to_dict()},
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], msa: MSAConfig, loss: MSALossConfig | None = None,
                     policy: EnginePolicy | None = None) -> "ModelConfig":  # fmt: skip
        """The backbone from an HF config.json dict (Qwen3 or MSA) with the given MSA configs; a stored
        ``msa_config`` is read by ``msa.model.checkpoint.official_msa_config``, not here."""
        d = dict(d)
        if d.get("rope_theta") is None and isinstance(d.get("rope_parameters"), dict):
            d["rope_theta"] = d["rope_parameters"].get("rope_theta")
        if d.get("head_dim") is None and d.get("hidden_size") and d.get("num_attention_heads"):
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"only SiLU (SwiGLU) MLPs are supported, config has hidden_act={act!r}")
        kwargs = {k: d[k] for k in cls.BACKBONE_KEYS if d.get(k) is not None}
        skip = set(cls.BACKBONE_KEYS) | {"msa_config", "model_type", "architectures", "hidden_act", "rope_parameters"}
        extra = {k: v for k, v in d.items() if k not in skip}
        return cls(**kwargs, msa=msa, extra=extra, loss=loss or MSALossConfig(), policy=policy or EnginePolicy())
