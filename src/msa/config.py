"""Typed configuration: the Qwen3-family backbone and the MSA options (official ``msa_config`` keys)."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DOC_CHOICES = ("generated", "routed")  # MSAConfig.doc_choice: which documents Memory Interleave reads (msa.engine.choice)
LEGACY_DOC_CHOICES = {"named": "routed"}  # saved by msa-bios-tiny: its requests are routed as "routed" routes them
AUX_LOSS_METHODS = ("INFONCE", "INFONCE_FOCAL", "INFONCE_DECOUPLE", "INFONCE_DECOUPLE_FOCAL", "BCE")


@dataclass
class MSAConfig:
    """MSA options. Field names and meanings are the official ``msa_config`` keys (MSA_SPEC Part B 1),
    defaults are the release script's (the MSA-4B checkpoint), plus the choices the release hard-codes.

    router_layer_idx: "all", "half" (layers L//2..L-1, the paper's "latter half"; written out as the
        explicit list when saved) or comma-separated layer indices.
    top_k_docs: documents selected per query per router layer (honoured at inference too).
    pooling_kernel_size: chunk length P of the mean pooling.
    head_reduce_method / query_reduce_method / chunk_reduce_method: routing reductions.
    decouple_router: separate router_q_proj / router_k_proj (else route with attention Q and pooled K).
    aux_loss / aux_loss_method / infonce_loss_temp: routing loss switch, variant and tau.
    rewrite_position: use the collator's document-wise position ids in training.
    lmloss_weigth (sic), auxloss_weight, recloss_weight, ansloss_weight: loss weights.
    template_len: tokens of the template prefix (official ``<|im_start|>user\\n`` = 3).
    query_position_offset: position of the first query token; None = template_len + top_k_docs (official).
    prompt_format: the prompt layout the model was trained with (msa.prompt.PROMPT_FORMATS): "official"
        (the release's, the default and what official checkpoints get) or "question" (ours: the routing
        query is the question alone). Engines and the training collator read it from the config.
    doc_choice: which documents Memory Interleave reads (msa.engine.choice): "generated" (official:
        the ids the model writes) or "routed" (ours: each request the model writes is routed on its
        own and its best unread document is read). The Engine's default. A saved "named" reads as
        "routed".
    routing_cosine: cosine routing scores (True) or raw dot / sqrt(D) (False) in training AND inference;
        None = what the official code does for ``aux_loss_method`` (training cosine for INFONCE*,
        inference cosine only for exactly "INFONCE"), needed to reproduce MSA-4B numbers.
    """

    router_layer_idx: str | None = "half"
    top_k_docs: int | None = 16
    pooling_kernel_size: int | None = 64
    head_reduce_method: str | None = "mean"
    query_reduce_method: str | None = "max"
    chunk_reduce_method: str | None = "max"
    decouple_router: bool | None = True
    decouple_pooling_mode: str | None = "mean"
    aux_loss: bool | None = True
    aux_loss_method: str | None = "INFONCE_DECOUPLE"
    infonce_loss_temp: float | None = 0.1
    rewrite_position: bool | None = True
    lmloss_weigth: float | None = 1.0
    auxloss_weight: float | None = 0.1
    recloss_weight: float | None = 0.0
    ansloss_weight: float | None = 1.0
    template_len: int = 3
    query_position_offset: int | None = None
    routing_cosine: bool | None = True
    prompt_format: str = "official"
    doc_choice: str = "generated"

    OFFICIAL_KEYS = (
        "router_layer_idx", "top_k_docs", "pooling_kernel_size", "head_reduce_method", "query_reduce_method",
        "chunk_reduce_method", "decouple_router", "decouple_pooling_mode", "aux_loss", "aux_loss_method",
        "infonce_loss_temp", "rewrite_position", "lmloss_weigth", "auxloss_weight", "recloss_weight",
        "ansloss_weight",
    )  # fmt: skip

    def validate(self, num_layers: int | None = None) -> None:
        """Raise ValueError on values the model cannot run with."""
        if not self.pooling_kernel_size or self.pooling_kernel_size < 1:
            raise ValueError(f"msa_config.pooling_kernel_size must be a positive int, got {self.pooling_kernel_size!r}")
        if self.top_k_docs is None or self.top_k_docs < 1:
            raise ValueError(f"msa_config.top_k_docs must be a positive int, got {self.top_k_docs!r}")
        if self.aux_loss_method is not None and self.aux_loss_method not in AUX_LOSS_METHODS:
            raise ValueError(f"msa_config.aux_loss_method {self.aux_loss_method!r} not in {AUX_LOSS_METHODS}")
        for name, allowed in (
            ("head_reduce_method", ("mean", "max")),
            ("query_reduce_method", ("max", "mean", "last")),
            ("prompt_format", ("official", "question")),
            ("doc_choice", DOC_CHOICES),
            ("chunk_reduce_method", ("max", "mean")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"msa_config.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if num_layers is not None:
            self.router_layers(num_layers)

    def router_layers(self, num_layers: int) -> tuple[int, ...]:
        """Parse ``router_layer_idx`` into sorted layer indices (empty when it is None)."""
        spec = self.router_layer_idx
        if spec is None:
            return ()
        spec = str(spec).strip()
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
        return int(self.top_k_docs or 0)

    @property
    def chunk_size(self) -> int:
        return int(self.pooling_kernel_size or 0)

    @property
    def query_offset(self) -> int:
        """Position of the first query token (official: 3 + 16 = 19)."""
        if self.query_position_offset is not None:
            return self.query_position_offset
        return self.template_len + self.top_k

    @property
    def tau(self) -> float:
        """Temperature, clamped to [0.001, 0.5] as the official code does."""
        return min(max(float(self.infonce_loss_temp or 0.1), 0.001), 0.5)

    def train_cosine(self) -> bool:
        """Whether routing scores are cosine in training (official: any INFONCE* method)."""
        if self.routing_cosine is not None:
            return self.routing_cosine
        return "INFONCE" in (self.aux_loss_method or "")

    def inference_cosine(self) -> bool:
        """Whether routing scores are cosine at inference (official: exactly "INFONCE")."""
        if self.routing_cosine is not None:
            return self.routing_cosine
        return self.aux_loss_method == "INFONCE"

    def to_dict(self, num_layers: int | None = None) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if num_layers is not None and d["router_layer_idx"] == "half":
            d["router_layer_idx"] = ",".join(str(i) for i in self.router_layers(num_layers))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], official: bool = True) -> "MSAConfig":
        """Build from a stored ``msa_config`` dict.

        official=True applies the official loader's semantics: a missing key reads as None (false),
        exactly like the release's ``DotDict``, with a warning where that silently changes routing.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            logger.info("msa_config: ignoring keys %s (not used by this implementation)", unknown)
        kwargs = {k: v for k, v in d.items() if k in names}
        if kwargs.get("doc_choice") in LEGACY_DOC_CHOICES:
            kwargs["doc_choice"] = LEGACY_DOC_CHOICES[kwargs["doc_choice"]]
        if official:
            for key in cls.OFFICIAL_KEYS:
                kwargs.setdefault(key, None)
            kwargs.setdefault("routing_cosine", None)
            missing = [k for k in cls.OFFICIAL_KEYS if k not in d]
            if missing:
                warnings.warn(f"msa_config lacks {missing}; they read as None/false as in the official loader", stacklevel=2)
            if "router_layer_idx" not in d:
                warnings.warn("msa_config has no router_layer_idx: no layer routes or keeps memory", stacklevel=2)
            if "decouple_router" not in d:
                warnings.warn(
                    "msa_config has no decouple_router: routing uses attention Q/K and router weights are not created",
                    stacklevel=2,
                )
        return cls(**kwargs)


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
            msa_config=self.msa.to_dict(self.num_hidden_layers),
        )
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], msa: MSAConfig | None = None) -> "ModelConfig":
        """From an HF config.json dict (Qwen3 or MSA). ``msa`` overrides any stored ``msa_config``."""
        d = dict(d)
        if d.get("rope_theta") is None and isinstance(d.get("rope_parameters"), dict):
            d["rope_theta"] = d["rope_parameters"].get("rope_theta")
        if d.get("head_dim") is None and d.get("hidden_size") and d.get("num_attention_heads"):
            d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"only SiLU (SwiGLU) MLPs are supported, config has hidden_act={act!r}")
        if msa is None:
            if "msa_config" in d:
                msa = MSAConfig.from_dict(d["msa_config"] or {}, official=True)
            else:
                msa = MSAConfig()
        kwargs = {k: d[k] for k in cls.BACKBONE_KEYS if d.get(k) is not None}
        skip = set(cls.BACKBONE_KEYS) | {"msa_config", "model_type", "architectures", "hidden_act", "rope_parameters"}
        extra = {k: v for k, v in d.items() if k not in skip}
        return cls(**kwargs, msa=msa, extra=extra)
