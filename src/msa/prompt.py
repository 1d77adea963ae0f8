"""Prompt layout shared by encoding, training and asking (official MSA-4B template by default)."""

from __future__ import annotations

from dataclasses import dataclass, fields

# doc_ids conventions (MSA_SPEC Part B 3.1)
QUERY, RESPONSE, TEMPLATE = 0, -1, -2


@dataclass(frozen=True)
class PromptFormat:
    """Every string the model sees around documents and questions.

    memory_prefix: template prefix encoded once at positions 0..P-1 (doc_ids -2).
    document: format of one memory document; ``{gid}`` is its global id, ``{text}`` its text.
    question_head / question_tail: around the question (doc_ids 0, the routing query).
    turn_end (doc_ids -2) and response_head (doc_ids -1) follow; the model continues after them.
    round_end: ends a retrieval round (after the generated ids); end_of_retrieval: no more documents;
    question_block: appended after end_of_retrieval; answer_lead: precedes the answer.
    """

    memory_prefix: str = "<|im_start|>user\n"
    document: str = "<|im_start|>[{gid}]. {text}[{gid}]<|im_end|>"
    question_head: str = "\nPlease answer the question based on the above historical document information\n\n"
    question_tail: str = "\nPlease return all documents related to the question\n"
    turn_end: str = "<|im_end|>\n"
    response_head: str = "<|im_start|>"
    round_end: str = "<|object_ref_end|>"
    end_of_retrieval: str = "<End-of-Retrieve>"
    question_block: str = "<|im_start|>The user's question is: {question}\n<|object_ref_end|>"
    answer_lead: str = "The answer to the question is: "
    end_of_turn: str = "<|im_end|>"

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> "PromptFormat":
        """From a stored dict (a bank manifest); keys of older versions that no longer exist are dropped."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def format_document(self, gid: int | str, text: str) -> str:
        return self.document.format(gid=gid, text=text)

    def retrieved_text(self, docs: list[tuple[int | str, str]]) -> str:
        """What the engine appends after a round: each document's original text, then round_end."""
        return "".join(f"[{gid}]. {text}\n" for gid, text in docs) + self.round_end


OFFICIAL = PromptFormat()
# Our own models: the routing query is the question alone. In the official turn ~31 of ~35 routing
# tokens are fixed template text, and a router trained from scratch with per-token cosine scores
# collapses to uniform scores on it; without it, it learns (docs/decisions.md).
QUESTION_ONLY = PromptFormat(question_head="\n", question_tail="\n")
PROMPT_FORMATS: dict[str, PromptFormat] = {"official": OFFICIAL, "question": QUESTION_ONLY}


def prompt_format(name: str) -> PromptFormat:
    """The PromptFormat called ``name`` (``EnginePolicy.prompt_format``)."""
    try:
        return PROMPT_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; expected one of {sorted(PROMPT_FORMATS)}") from None


def encode_segments(tokenizer, segments: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    """Tokenise (text, doc_id) segments separately and concatenate: token ids and per-token doc_ids."""
    ids: list[int] = []
    doc_ids: list[int] = []
    for text, did in segments:
        if not text:
            continue
        t = tokenizer.encode(text, add_special_tokens=False)
        ids.extend(t)
        doc_ids.extend([did] * len(t))
    return ids, doc_ids


def query_segments(fmt: PromptFormat, question: str) -> list[tuple[str, int]]:
    """Round-1 query: the question (routing, 0) between its head and tail, then turn end and response head."""
    return [
        (fmt.question_head + question + fmt.question_tail, QUERY),
        (fmt.turn_end, TEMPLATE),
        (fmt.response_head, RESPONSE),
    ]
