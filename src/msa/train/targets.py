"""Target formats: what follows the response head in a training sequence, and which tokens are targets.

A target format is a function ``(sample, fmt) -> list[Segment]``. Each segment is tokenised on its own
and appended after ``<|im_start|>`` (the response head). ``target=True`` segments are LM-loss targets;
the others are context the inference engine would have appended itself (they are attended to but not
predicted). ``doc_id`` follows MSA_SPEC B 3.1: 0 = routing-query token, -1 = other context.

Which tokens are targets, per format (``fmt`` = the official PromptFormat):

``ids_only`` (generative retrieval, continual pre-training)
    target ``[g1][g2]...<|object_ref_end|>``.
``ids_then_answer`` (compact single-sequence SFT, no appended text; not an engine transcript)
    target ``[g1]...<|object_ref_end|>The answer to the question is: {answer}<|im_end|>``.
``answer_only``
    target ``The answer to the question is: {answer}<|im_end|>``.
``interleave_transcript`` (official Memory Interleave transcript, MSA_SPEC B 7, all rounds in one sequence)
    for each positive g in reasoning order:
        ``[g]<|object_ref_end|>``                         target   (-1)   model writes the id, ends the round
        ``[g]. {text of g}\\n``                            context  (0 for the LAST positive, -1 before)
        ``<|object_ref_end|>``                            context  (-1)   appended by the engine
    then ``<End-of-Retrieve>``                            target   (-1)
         ``<|im_start|>The user's question is: {q}\\n<|object_ref_end|>``   context (-1)
         ``The answer to the question is: {answer}<|im_end|>``            target  (-1)
    The doc_ids mirror the last regenerate prompt of the official engine: the routing query is the
    question plus the most recently appended document text; earlier appended text is plain context.
    Caveat: one training sequence routes once, with that final query, so the selection the early
    ``[g1]`` tokens see was made with the later appended text; this equals the engine only when all of
    the sample's documents fit in top-k.

``interleave_round`` (one engine round per training sequence; see ``InterleaveRounds``)
    round r < R (R = number of gold documents): the earlier rounds' transcript as context (the ids
    ``[g]<|object_ref_end|>`` too), then target ``[g_r]<|object_ref_end|>``; round R: the whole
    retrieval transcript as context, then target ``<End-of-Retrieve>``, context question block, target
    the answer. The routing query (doc_id 0) is the question plus the latest appended text, exactly as
    the engine routes that round, so routing and id generation are trained on the query they will see.

``interleave_named`` (``interleave_round`` for ``doc_choice="routed"``)
    the same rounds, but a retrieval round's request names the document's subject, ``[NAME]`` (from the
    sample's ``extra["names"]``; documents without a name keep their id): the model copies the name out
    of the question or out of the text it read, and the engine routes that request on its own.

A sample whose ``target`` field is set uses it verbatim as one target segment (``literal_target``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from msa.prompt import QUERY, RESPONSE, PromptFormat
from msa.train.data import TrainSample

__all__ = [
    "Segment",
    "TargetFormat",
    "TARGET_FORMATS",
    "ids_only",
    "ids_then_answer",
    "answer_only",
    "interleave_transcript",
    "interleave_round",
    "interleave_named",
    "literal_target",
    "target_format",
]


@dataclass(frozen=True)
class Segment:
    """A piece of the response side: text, its doc_id, and whether its tokens are LM targets."""

    text: str
    doc_id: int
    target: bool


TargetFormat = Callable[[TrainSample, PromptFormat], list[Segment]]


def _ids(sample: TrainSample) -> str:
    return "".join(f"[{g}]" for g in sample.positives)


def _answer(sample: TrainSample, fmt: PromptFormat) -> str:
    if sample.answer is None:
        raise ValueError("this target format needs the sample's 'answer'")
    return fmt.answer_lead + sample.answer + fmt.end_of_turn


def ids_only(sample: TrainSample, fmt: PromptFormat) -> list[Segment]:
    return [Segment(_ids(sample) + fmt.round_end, RESPONSE, True)]


def ids_then_answer(sample: TrainSample, fmt: PromptFormat) -> list[Segment]:
    return [Segment(_ids(sample) + fmt.round_end + _answer(sample, fmt), RESPONSE, True)]


def answer_only(sample: TrainSample, fmt: PromptFormat) -> list[Segment]:
    return [Segment(_answer(sample, fmt), RESPONSE, True)]


def interleave_transcript(sample: TrainSample, fmt: PromptFormat) -> list[Segment]:
    text = {d.id: d.text for d in sample.memory}
    out: list[Segment] = []
    for n, g in enumerate(sample.positives):
        last = n == len(sample.positives) - 1
        out.append(Segment(f"[{g}]" + fmt.round_end, RESPONSE, True))
        out.append(Segment(f"[{g}]. {text[g]}\n", QUERY if last else RESPONSE, False))
        out.append(Segment(fmt.round_end, RESPONSE, False))
    out.append(Segment(fmt.end_of_retrieval, RESPONSE, True))
    out.append(Segment(fmt.question_block.format(question=sample.question), RESPONSE, False))
    out.append(Segment(_answer(sample, fmt), RESPONSE, True))
    return out


def interleave_round(sample: TrainSample, fmt: PromptFormat, request: Callable[[int], str] = str) -> list[Segment]:
    chain = sample.extra.get("chain")
    r = sample.extra.get("round")
    if chain is None or r is None:
        raise ValueError("interleave_round needs samples from InterleaveRounds (extra 'chain' and 'round')")
    text = {d.id: d.text for d in sample.memory} | sample.extra.get("read", {})
    reads = chain[:r] if r < len(chain) else sample.extra.get("reads", chain)  # answer rounds: all read
    out: list[Segment] = []
    for n, g in enumerate(reads):
        out.append(Segment(f"[{request(g)}]" + fmt.round_end, RESPONSE, False))
        out.append(Segment(f"[{g}]. {text[g]}\n", QUERY if n == len(reads) - 1 else RESPONSE, False))
        out.append(Segment(fmt.round_end, RESPONSE, False))
    if r < len(chain):
        out.append(Segment(f"[{request(chain[r])}]" + fmt.round_end, RESPONSE, True))
        return out
    out.append(Segment(fmt.end_of_retrieval, RESPONSE, True))
    out.append(Segment(fmt.question_block.format(question=sample.question), RESPONSE, False))
    out.append(Segment(_answer(sample, fmt), RESPONSE, True))
    return out


def interleave_named(sample: TrainSample, fmt: PromptFormat) -> list[Segment]:
    names = sample.extra.get("names", {})
    return interleave_round(sample, fmt, lambda g: names.get(g, str(g)))


def literal_target(sample: TrainSample, fmt: PromptFormat) -> list[Segment]:
    if sample.target is None:
        raise ValueError("literal_target needs the sample's 'target'")
    return [Segment(sample.target, RESPONSE, True)]


TARGET_FORMATS: dict[str, TargetFormat] = {
    "ids_only": ids_only,
    "ids_then_answer": ids_then_answer,
    "answer_only": answer_only,
    "interleave_transcript": interleave_transcript,
    "interleave_round": interleave_round,
    "interleave_named": interleave_named,
    "literal_target": literal_target,
}


def target_format(name: str) -> TargetFormat:
    try:
        return TARGET_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown target format {name!r}; expected one of {sorted(TARGET_FORMATS)}") from None
