"""``msa serve``: its arguments, and running the server with uvicorn."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from msa.server.config import ServerConfig

log = logging.getLogger(__name__)


TUNABLES = [  # ServerConfig fields set by `--name-with-dashes`: (field, type, help)
    ("max_queue", int, "questions admitted per bank (waiting or answering); more get 429"),
    ("max_batch", int, "questions per batched engine call"),
    ("batch_wait_ms", float, "how long a batch's first question waits for others, at most"),
    ("batch_gap_ms", float, "a batch closes once no question has arrived for this long"),
    ("max_body_bytes", int, "larger request bodies get 413"),
    ("max_tokens_limit", int, "larger max_tokens get 400"),
    ("default_max_tokens", int, "max_tokens of requests that give none (per retrieval round)"),
    ("request_timeout_s", float, "seconds before an unanswered question is cancelled (504)"),
    ("sync_add_limit", int, "adds of more documents run as background jobs"),
    ("job_slice", int, "documents a background job commits per step"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``msa serve`` options (defaults: ``ServerConfig``)."""
    d = ServerConfig.__dataclass_fields__
    p.add_argument("--model", required=True, help="checkpoint directory or shipped model name")
    p.add_argument("--bank", action="append", default=[], metavar="PATH", help="a bank to serve (repeatable)")
    p.add_argument("--bank-dir", default=None, help="serve every bank in DIR and create new ones there")
    p.add_argument("--state-dir", default=None, help="where background add jobs are kept (default: beside each bank)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default=None)
    p.add_argument("--api-key-file", default=None, help="file holding the bearer API key clients must send")
    p.add_argument("--allow-no-key", action="store_true", help="serve a non-loopback host without an API key")
    for name, kind, text in TUNABLES:
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=d[name].default,
                       help=f"{text} (default {d[name].default})")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    key = None
    if args.api_key_file:
        f = Path(args.api_key_file)
        if not f.is_file():
            raise FileNotFoundError(f"no such API key file: {f}")
        key = f.read_text().strip()
        if not key:
            raise ValueError(f"the API key file {f} is empty")
    return ServerConfig(
        model=args.model, banks=args.bank, bank_dir=args.bank_dir, state_dir=args.state_dir, host=args.host,
        port=args.port, device=args.device, api_key=key, allow_no_key=args.allow_no_key,
        **{name: getattr(args, name) for name, _, _ in TUNABLES},
    )  # fmt: skip


def serve(config: ServerConfig) -> None:
    """Load the model and banks, then serve until interrupted (SIGINT / SIGTERM)."""
    try:
        import uvicorn

        from msa.server.app import create_app
    except ImportError as e:
        raise ValueError(f"msa serve needs the serve extra ({e.name} is missing): "
                         "pip install 'memory-sparse-attention[serve]'") from None  # fmt: skip
    for b in config.banks:
        if not (b / "catalog.sqlite").is_file():
            raise FileNotFoundError(f"{b} is not a memory bank")
    app = create_app(config)
    names = ", ".join(b.model_id for b in app.state.registry.banks.values()) or "no banks yet"
    log.warning("msa serve: http://%s:%d (%s)", config.host, config.port, names)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5)


def main(args: argparse.Namespace) -> int:
    """``msa serve`` with parsed arguments (``add_arguments``)."""
    serve(config_from_args(args))
    return 0
