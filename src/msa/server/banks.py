"""The served banks: per bank a reader (asks, through its scheduler), a writer behind a lock, and jobs.

Readers and the writer are separate ``MemoryBank`` objects on the same directory: a batch of asks
reads one committed snapshot (routing, slot ids and texts of one catalog state, ``MemoryBank.snapshot``)
while a write encodes, and sees the write only once it has committed. Writes to one bank are
serialised by its lock (one writer per bank).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from msa.engine import Answer, Engine
from msa.engine.generation import Sampler
from msa.memory import BankError, MemoryBank
from msa.prompt import prompt_format
from msa.server.config import ServerConfig
from msa.server.jobs import JobRunner, JobStore
from msa.server.metrics import Metrics
from msa.server.scheduler import AskOptions, Scheduler

log = logging.getLogger(__name__)

BANK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
T = TypeVar("T")


class ServedBank:
    """One bank as the server holds it."""

    def __init__(self, name: str, path: Path, model, tokenizer, model_name: str, config: ServerConfig,
                 metrics: Metrics):  # fmt: skip
        self.name, self.path, self.model, self.tokenizer = name, path, model, tokenizer
        self.model_id = f"{model_name}@{name}"
        self.device = config.device
        self.reader = MemoryBank.open(path, model, tokenizer, device=config.device, readonly=True)
        self.writer = MemoryBank.open(path, model, tokenizer, device=config.device)
        self._write_lock = threading.Lock()
        self.scheduler = Scheduler(name, self._answer_batch, metrics, config.max_queue, config.max_batch,
                                   config.batch_wait_ms / 1000, config.batch_gap_ms / 1000)  # fmt: skip
        state = (config.state_dir / name) if config.state_dir is not None else path.with_name(path.name + ".jobs")
        self.jobs = JobRunner(name, JobStore(state), self._add_step, self.write, config.job_slice)

    def write(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` as this bank's only writer."""
        with self._write_lock:
            return fn()

    def add(self, texts: list[str], ids: list[Any] | None, on_duplicate: str | None = None,
            job: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Store documents (call inside ``write``): {"ids", "added", "unchanged", "replaced", "split"}."""
        kw: dict[str, Any] = {"job": job}
        if on_duplicate is not None:
            kw["on_duplicate"] = on_duplicate
        rep = self.writer.add_documents(texts, ids, **kw)
        return {"ids": list(rep.ids), "added": rep.added, "unchanged": rep.unchanged, "replaced": rep.replaced,
                "split": {str(k): v for k, v in rep.split.items()}}  # fmt: skip

    def _add_step(self, texts: list[str], ids: list[Any] | None, job: str, on_duplicate: str | None) -> dict[str, Any]:
        return self.add(texts, ids, on_duplicate, job)

    def parse_id(self, token: str):
        """The document a URL token names in this bank (``MemoryBank.parse_id``)."""
        return self.reader.parse_id(token)

    def display_id(self, internal: int):
        """The user's id of an engine (internal) id; ids the bank does not hold are shown as written."""
        try:
            return self.reader.user_id(internal)
        except (BankError, KeyError, ValueError, TypeError):
            return internal

    def _answer_batch(self, texts: list[str], options: AskOptions, on_token: Callable[[int, str], None],
                      samplers: list[Sampler | None] | None) -> list[Answer]:  # fmt: skip
        engine = Engine(self.model, self.tokenizer, self.reader, device=self.device, prompt=self.reader.prompt,
                        doc_choice=options.doc_choice)  # fmt: skip
        return engine.ask_batch(texts, options.interleave, options.max_rounds, options.max_new_tokens,
                                options.return_routing, on_token=on_token, top_k=options.top_k,
                                samplers=samplers)  # fmt: skip

    def close(self) -> None:
        self.jobs.close()
        self.scheduler.close()
        self.reader.close()
        self.writer.close()


class Registry:
    """The model, its tokenizer and every served bank (by name)."""

    def __init__(self, config: ServerConfig, metrics: Metrics):
        from msa.model import MSAForCausalLM, resolve_model_path
        from msa.tokenizer import load_tokenizer

        self.config, self.metrics = config, metrics
        path = resolve_model_path(config.model)
        if not (path / "tokenizer.json").is_file():
            raise ValueError(f"{path} has no tokenizer.json")
        self.model = MSAForCausalLM.from_pretrained(path, device=config.device or "cpu").eval()
        self.tokenizer = load_tokenizer(path)
        self.model_name = Path(config.model).name
        self.lock = threading.Lock()
        self.banks: dict[str, ServedBank] = {}
        paths = list(config.banks)
        if config.bank_dir is not None:
            config.bank_dir.mkdir(parents=True, exist_ok=True)
            paths += sorted(p for p in config.bank_dir.iterdir() if (p / "catalog.sqlite").is_file())
        for p in paths:
            self._serve(p.name, p)

    def _serve(self, name: str, path: Path) -> ServedBank:
        if name in self.banks:
            raise ValueError(f"two banks are named {name!r} ({self.banks[name].path} and {path}): rename one")
        if not (path / "catalog.sqlite").is_file():
            raise ValueError(f"{path} is not a memory bank")
        bank = ServedBank(name, path, self.model, self.tokenizer, self.model_name, self.config, self.metrics)
        self.banks[name] = bank
        log.info("serving bank %s (%s) as %s", name, path, bank.model_id)
        return bank

    def get(self, name: str) -> ServedBank:
        """A bank by its name or its model id; KeyError naming it otherwise."""
        bank = self.banks.get(name)
        if bank is None and "@" in name:
            model, _, short = name.rpartition("@")
            bank = self.banks.get(short) if model == self.model_name else None
        if bank is None:
            raise KeyError(name)
        return bank

    def create(self, name: str) -> ServedBank:
        """A new empty bank ``name`` in ``bank_dir`` (ValueError for a bad or taken name)."""
        if self.config.bank_dir is None:
            raise PermissionError("this server was started without --bank-dir: it cannot create banks")
        if not BANK_NAME.match(name):
            raise ValueError("a bank name is 1-64 letters, digits, '_' or '-', starting with a letter or digit")
        with self.lock:
            if name in self.banks:
                raise FileExistsError(f"bank {name!r} exists")
            path = self.config.bank_dir / name
            fmt = prompt_format(self.model.config.policy.prompt_format)
            MemoryBank.create(path, self.model, self.tokenizer, fmt, model_source=self.config.model).close()
            return self._serve(name, path)

    def job(self, job_id: str):
        for bank in self.banks.values():
            if job_id in bank.jobs.jobs:
                return bank.jobs.jobs[job_id]
        raise KeyError(job_id)

    def close(self) -> None:
        for bank in self.banks.values():
            bank.close()
