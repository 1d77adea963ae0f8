"""The server's settings (one typed value, filled by ``msa serve`` or by code)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerConfig:
    """Settings of ``msa serve``.

    model: checkpoint directory or shipped model name; every bank served must be encoded by it.
    banks: bank directories served (model id ``<model name>@<directory name>``).
    bank_dir: a directory whose banks are all served and where ``POST /v1/banks`` creates new ones
        (clients name banks, never paths); None: clients cannot create banks.
    state_dir: where background add jobs are kept (default: ``<bank>.jobs`` beside each bank).
    api_key: bearer key required on every route but ``/health``; None: no key (refused on a
        non-loopback host unless ``allow_no_key``).
    max_queue: questions admitted per bank (waiting or answering); more get 429.
    max_batch / batch_wait_ms / batch_gap_ms: questions per ``Engine.ask_batch`` call; how long the
        first waits for others at most, and the quiet time after the last arrival that closes the batch.
    max_body_bytes: request bodies above this get 413. max_tokens_limit: larger ``max_tokens`` get 400.
    default_max_tokens: ``max_tokens`` when a request gives none (per retrieval round).
    request_timeout_s: a question not answered by then is cancelled (504).
    sync_add_limit: adds of more documents than this run as a background job (202 + job id).
    job_slice: documents a background job commits per step (its progress unit; a resumed job
        re-runs committed steps as no-ops).
    """

    model: str
    banks: list[Path] = field(default_factory=list)
    bank_dir: Path | None = None
    state_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None
    api_key: str | None = None
    allow_no_key: bool = False
    max_queue: int = 64
    max_batch: int = 32
    batch_wait_ms: float = 50.0
    batch_gap_ms: float = 2.0
    max_body_bytes: int = 8 << 20
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    request_timeout_s: float = 120.0
    sync_add_limit: int = 64
    job_slice: int = 64

    def __post_init__(self) -> None:
        self.banks = [Path(b) for b in self.banks]
        self.bank_dir = Path(self.bank_dir) if self.bank_dir is not None else None
        self.state_dir = Path(self.state_dir) if self.state_dir is not None else None
        for name in ("max_queue", "max_batch", "max_body_bytes", "max_tokens_limit", "default_max_tokens",
                     "sync_add_limit", "job_slice"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.request_timeout_s <= 0 or self.batch_wait_ms < 0 or self.batch_gap_ms < 0:
            raise ValueError("request_timeout_s must be > 0, batch_wait_ms and batch_gap_ms >= 0")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must not exceed max_tokens_limit")
        if self.api_key is None and not self.allow_no_key and not is_loopback(self.host):
            raise ValueError(f"binding {self.host} (not loopback) needs an API key (--api-key-file), "
                             "or --allow-no-key to serve without one")  # fmt: skip
        if not self.banks and self.bank_dir is None:
            raise ValueError("nothing to serve: give --bank PATH (one or more) or --bank-dir DIR")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
