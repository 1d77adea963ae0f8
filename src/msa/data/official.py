"""The authors' benchmark files (MSA_SPEC Part B 8): readers, a safe unpickler, synthetic writers.

Formats
    memory file ``mdata_{name}.pkl``: a pickled iterable of document strings; a document's id is its
    index in the file. JSON form (ours, same content): ``mdata_{name}.json``, a list of strings.
    query file ``qdata_{name}.pkl``: a pickled list of ``{"query": str, "reference_list": [gold
    document texts], "answer": ...}``. JSON form (the release's alternative): a list of
    ``{"question": str, "labels": [gold document texts], "answer": ...}`` (``.json``), or one such
    object per line (``.jsonl``). Either spelling of the keys is accepted in either container.

Gold ids are recovered as the release does, by exact text match against the memory file:
``doc_to_idx = {text: index}`` built in file order, so for a text that occurs several times **the
last index wins**. A gold text that is not in memory is reported (``Query.missing``), not guessed.

Pickles are untrusted input. :func:`safe_load_pickle` admits only what pickle encodes without naming
a Python object: lists, tuples, dicts, strings, bytes, ints, floats, booleans and None (plus the
builtins ``set`` and ``frozenset``, which protocols below 4 construct by name, and the
``_codecs.encode(str, "latin1")`` call by which protocols 0-2 write bytes). Any other object
(a class, a function such as ``os.system``, a numpy array) is refused with one line naming it,
before anything is constructed or called: :class:`UnsafePickleError`.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "OfficialFormatError",
    "UnsafePickleError",
    "Query",
    "safe_load_pickle",
    "read_memory",
    "read_memory_documents",
    "read_queries",
    "doc_to_idx",
    "gold_ids",
    "write_memory",
    "write_queries",
    "is_memory_file",
    "count_units",
    "chunk_text",
    "contexts_of",
    "bios_files",
    "ruler_files",
]

_ALLOWED_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
                    ("__builtin__", "frozenset")}  # fmt: skip


class OfficialFormatError(ValueError):
    """A benchmark file that does not have the official shape (one line: file and what is wrong)."""


class UnsafePickleError(OfficialFormatError):
    """A pickle that names a Python object outside the admitted plain types; nothing was run."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler whose only reachable globals are ``set``, ``frozenset`` and a bytes-only ``_codecs.encode``.

    Every way a pickle can call code (REDUCE, BUILD, INST, OBJ, NEWOBJ, the extension registry)
    needs a callable obtained through ``find_class`` (or ``persistent_load``, which the base class
    refuses), so refusing here refuses before anything runs.
    """

    def __init__(self, file, name: str):
        super().__init__(file)
        self._name = name

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return set if name == "set" else frozenset
        if (module, name) == ("_codecs", "encode"):  # how protocols 0-2 spell bytes
            return self._latin1_bytes
        raise UnsafePickleError(
            f"{self._name}: refused to load a pickle that references {module}.{name}; only lists, tuples, "
            "dicts, strings, bytes, numbers, booleans and None are admitted (convert the file to JSON)"
        )

    def _latin1_bytes(self, text, encoding="utf-8"):
        """``_codecs.encode`` as protocols 0-2 call it for bytes: (str, "latin1") only."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(f"{self._name}: refused a _codecs.encode call other than the one bytes use")
        return text.encode("latin-1")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._name}: refused to load a pickle with persistent ids")


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle holding plain data only (see the module docstring); never runs code from it.

    Raises OfficialFormatError (missing or corrupt file) or UnsafePickleError (a forbidden object).
    """
    p = Path(path)
    if not p.is_file():
        raise OfficialFormatError(f"no such file: {p}")
    try:
        with p.open("rb") as f:
            return _PlainUnpickler(f, str(p)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise OfficialFormatError(f"{p}: not a readable pickle ({type(e).__name__}: {e})") from None


def _load(path: str | Path) -> Any:
    """A .pkl through the safe unpickler, a .json as JSON, a .jsonl as a list of its lines' values."""
    p = Path(path)
    if p.suffix == ".pkl":
        return safe_load_pickle(p)
    if not p.is_file():
        raise OfficialFormatError(f"no such file: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise OfficialFormatError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise OfficialFormatError(f"{p}: malformed JSON ({e.msg}, line {e.lineno})") from None


def _text(value: Any, where: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise OfficialFormatError(f"{where}: bytes that are not UTF-8") from None
    if not isinstance(value, str):
        raise OfficialFormatError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def read_memory(path: str | Path) -> list[str]:
    """The documents of a memory file, in file order (document id = list index).

    ``mdata_*.pkl`` (any list / tuple of strings or UTF-8 bytes) or its JSON form (a list of strings).
    """
    data = _load(path)
    if isinstance(data, dict) or not isinstance(data, (list, tuple)):
        raise OfficialFormatError(f"{path}: a memory file holds a list of document strings, got {type(data).__name__}")
    return [_text(d, f"{path}: document {i}") for i, d in enumerate(data)]


def read_memory_documents(path: str | Path) -> tuple[list[str], list[int]]:
    """Texts and ids (= index in the file) for ``msa bank add``; empty documents are left out (the
    bank stores none) with a warning, the others keep their index as id."""
    docs = read_memory(path)
    keep = [i for i, d in enumerate(docs) if d.strip()]
    if len(keep) < len(docs):
        logger.warning("%s: %d empty documents left out (ids stay the file index)", path, len(docs) - len(keep))
    return [docs[i] for i in keep], keep


def is_memory_file(path: str) -> bool:
    """Whether ``msa bank add`` should read ``path`` as an official memory file: ``*.pkl`` or ``mdata_*.json``."""
    name = Path(path).name
    return name.endswith(".pkl") or (name.startswith("mdata_") and name.endswith(".json"))


@dataclass
class Query:
    """One benchmark question.

    question: the query text; answer: the reference answer as stored (a string, or a list of them);
    references: the gold document texts; gold: their ids in the memory (sorted, unique; last index
    wins for duplicated texts); missing: how many gold texts are not in the memory.
    """

    question: str
    answer: Any
    references: list[str]
    gold: list[int] = field(default_factory=list)
    missing: int = 0


def read_queries(path: str | Path) -> list[Query]:
    """The questions of ``qdata_*.pkl`` or its JSON forms (``gold`` is filled in by :func:`gold_ids`)."""
    data = _load(path)
    if not isinstance(data, (list, tuple)):
        raise OfficialFormatError(f"{path}: a query file holds a list of queries, got {type(data).__name__}")
    out = []
    for i, row in enumerate(data):
        where = f"{path}: query {i}"
        if not isinstance(row, dict):
            raise OfficialFormatError(f"{where}: expected a dict, got {type(row).__name__}")
        q = row.get("query", row.get("question"))
        refs = row.get("reference_list", row.get("labels"))
        if q is None or refs is None or "answer" not in row:
            raise OfficialFormatError(f"{where}: needs query/question, reference_list/labels and answer keys")
        if isinstance(refs, (str, bytes)) or not isinstance(refs, (list, tuple)):
            raise OfficialFormatError(f"{where}: reference_list must be a list of document texts")
        out.append(Query(_text(q, where), row["answer"], [_text(r, f"{where} reference") for r in refs]))
    return out


def doc_to_idx(documents: Iterable[str] | Mapping[int, str]) -> dict[str, int]:
    """Text -> id, walking the documents in id order (a sequence: id = index; a mapping: id -> text);
    a repeated text maps to its LAST (largest) id: the release's rule."""
    pairs = sorted(documents.items()) if isinstance(documents, Mapping) else enumerate(documents)
    return {text: i for i, text in pairs}


def gold_ids(queries: list[Query], index: dict[str, int]) -> list[Query]:
    """Fill every query's ``gold`` (sorted unique ids of its reference texts) and ``missing``, in place."""
    missing = 0
    for q in queries:
        found = [index[t] for t in q.references if t in index]
        q.gold = sorted(set(found))
        q.missing = len(q.references) - len(found)
        missing += q.missing
    if missing:
        logger.warning("%d gold document texts are not in the memory (no exact match)", missing)
    return queries


# -- writers ----------------------------------------------------------------------------------------
def _dump(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".pkl":
        tmp.write_bytes(pickle.dumps(data, protocol=4))
    else:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def write_memory(path: str | Path, documents: Sequence[str]) -> Path:
    """Write a memory file: a pickled list of strings (``.pkl``) or a JSON list (``.json``)."""
    return _dump(Path(path), [str(d) for d in documents])


def write_queries(path: str | Path, rows: Iterable[tuple[str, list[str], Any]]) -> Path:
    """Write a query file from (question, gold document texts, answer) rows: ``.pkl`` with the
    release's keys ``{query, reference_list, answer}``, ``.json`` with ``{question, labels, answer}``."""
    p = Path(path)
    if p.suffix == ".pkl":
        data = [{"query": q, "reference_list": list(refs), "answer": a} for q, refs, a in rows]
    else:
        data = [{"question": q, "labels": list(refs), "answer": a} for q, refs, a in rows]
    return _dump(p, data)


# -- chunking a long context into a memory file -----------------------------------------------------
_UNIT = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|\d|[^\W\d_\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]+|[^\w\s]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def count_units(text: str) -> int:
    """Length for chunking: words, single digits, punctuation marks and single CJK characters count one."""
    return len(_UNIT.findall(text))


def _cut(sentence: str, limit: int) -> list[str]:
    """A sentence over ``limit`` units cut at whitespace (or between characters if it has none)."""
    words = sentence.split(" ") if " " in sentence else list(sentence)
    sep = " " if " " in sentence else ""
    out, cur, used = [], [], 0
    for w in words:
        n = count_units(w)
        if cur and used + n > limit:
            out.append(sep.join(cur))
            cur, used = [], 0
        cur.append(w)
        used += n
    if cur:
        out.append(sep.join(cur))
    return out


def chunk_text(text: str, doc_tokens: int = 512) -> list[str]:
    """Cut a long context into documents, by rule (the command ``msa bench chunk``).

    1. Paragraphs are separated by blank lines; inside a paragraph sentences end after ``.``, ``!``,
       ``?`` followed by whitespace, or after ``。！？``; other whitespace inside a sentence is kept.
    2. A sentence longer than ``doc_tokens`` units (:func:`count_units`) is cut at spaces (between
       characters in text without spaces) into pieces of at most ``doc_tokens`` units.
    3. Sentences are packed in order into a document while its total stays ``<= doc_tokens``; the next
       one starts a new document. Sentences are joined by one space, paragraphs by a blank line.

    No sentence under the limit is ever split, so a RULER needle stays whole; the same text always
    gives the same documents.
    """
    if doc_tokens < 1:
        raise ValueError(f"doc_tokens must be >= 1, got {doc_tokens}")
    docs: list[str] = []
    cur, used = "", 0
    for para in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        first = True
        for sentence in (s.strip() for s in _SENTENCE.split(para)):
            if not sentence:
                continue
            for piece in _cut(sentence, doc_tokens) if count_units(sentence) > doc_tokens else [sentence]:
                n = count_units(piece)
                if cur and used + n > doc_tokens:
                    docs.append(cur)
                    cur, used = "", 0
                cur = piece if not cur else cur + ("\n\n" if first else " ") + piece
                used += n
                first = False
    if cur:
        docs.append(cur)
    return docs


# -- synthetic files in the official formats --------------------------------------------------------
def bios_files(out_dir: str | Path, name: str = "bios", num_people: int = 48, num_single: int = 4,
               num_multi: int = 4, seed: int = 3, suffix: str = ".pkl") -> tuple[Path, Path]:  # fmt: skip
    """``mdata_{name}`` / ``qdata_{name}`` from a bios world (:class:`msa.data.bios.BiosWorld`, ``seed``):
    every person's biography is a document (id = person index); single- and 2-hop questions with their
    gold biographies as ``reference_list``. ``suffix``: ".pkl" (the release's files) or ".json"."""
    from msa.data.bios import BiosConfig, BiosWorld

    world = BiosWorld(BiosConfig(num_people=num_people, seed=seed))
    docs = list(world.iter_documents(0, num_people))
    qs = list(world.iter_questions(num_single, "single", seed=seed)) + list(world.iter_questions(num_multi, "multi", seed=seed))
    out = Path(out_dir)
    m = write_memory(out / f"mdata_{name}{suffix}", docs)
    q = write_queries(out / f"qdata_{name}{suffix}", ((x.text, [docs[i] for i in x.gold_ids], x.answer) for x in qs))
    return m, q


def ruler_files(out_dir: str | Path, name: str = "ruler", tasks: Sequence[str] = ("niah_single_1", "niah_multikey_1"),
                context_tokens: int = 2048, samples: int = 1, doc_tokens: int = 128, seed: int = 0,
                suffix: str = ".pkl") -> tuple[Path, Path]:  # fmt: skip
    """``mdata_{name}`` / ``qdata_{name}`` from RULER NIAH samples (:func:`msa.data.ruler.make_sample`):
    each sample's context is cut by :func:`chunk_text`, all samples' documents form one memory; a
    question's gold documents are those holding a needle with one of its answers; the answer is the
    expected values joined by ", ". Repeated haystack documents are kept (their id: last index wins)."""
    from msa.data.ruler import make_sample

    docs: list[str] = []
    rows = []
    for task in tasks:
        for k in range(samples):
            s = make_sample(task, context_tokens, seed=seed + k)
            chunks = chunk_text(s.context, doc_tokens)
            docs.extend(chunks)
            needles = [n for n in s.needles if any(a in n for a in s.answers)]
            gold = [c for c in chunks if any(n in c for n in needles)]
            rows.append((s.question, gold, ", ".join(s.answers)))
    out = Path(out_dir)
    return write_memory(out / f"mdata_{name}{suffix}", docs), write_queries(out / f"qdata_{name}{suffix}", rows)


def contexts_of(path: str | Path, field_name: str = "context") -> list[str]:
    """Long contexts of a file: a text file is one context; a ``.jsonl`` (LongBench style) gives the
    ``field_name`` string of every line."""
    p = Path(path)
    if not p.is_file():
        raise OfficialFormatError(f"no such file: {p}")
    if p.suffix != ".jsonl":
        try:
            return [p.read_text(encoding="utf-8")]
        except UnicodeDecodeError as e:
            raise OfficialFormatError(f"{p}: not UTF-8 text (byte {e.start})") from None
    rows = _load(p)
    out = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get(field_name), str):
            raise OfficialFormatError(f"{p}:{i}: expected an object with a {field_name!r} string")
        out.append(r[field_name])
    return out
