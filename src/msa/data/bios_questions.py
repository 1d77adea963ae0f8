"""Questions about the people of a bios world (``BiosWorld`` inherits ``BiosQuestions``).

single-hop: one attribute (or relation name) of one person, gold ``[i]``; the answer string occurs
verbatim in document ``i``. multi-hop (2-hop): an attribute of a related person, gold ``[i, j]`` in
that order, where document ``i`` names ``j`` by full name and the answer occurs verbatim in document
``j``. Every wording split (``msa.data.bios_text.WORDINGS``) asks about the same people and attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from msa.data.bios_text import ATTRIBUTES, HELDOUT_LEADS, RELATIONS, _MULTI_ATTRIBUTES, lead_in, question_templates
from msa.data.jsonl import PathOrFile, write_jsonl

if TYPE_CHECKING:
    from msa.data.bios import Person

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """A question with its gold documents.

    Attributes:
        text: the question, e.g. ``"In which city was Ilvaro Quenwick's mentor born?"``.
        answer: the exact answer string; it occurs verbatim in the last gold document.
        gold_ids: documents needed, in reasoning order: ``(i,)`` single-hop, ``(i, j)`` multi-hop
            where document ``i`` names person ``j``.
        kind: ``"single"`` or ``"multi"``.
        attribute: the attribute asked (one of :data:`ATTRIBUTES`, or a relation name for a
            single-hop "who is X's mentor" question).
        relation: the relation followed in a multi-hop question, else ``None``.
    """

    text: str
    answer: str
    gold_ids: tuple[int, ...]
    kind: str
    attribute: str
    relation: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form: ``{"question", "answer", "gold_ids", "kind", "attribute", "relation"}``."""
        return {
            "question": self.text,
            "answer": self.answer,
            "gold_ids": list(self.gold_ids),
            "kind": self.kind,
            "attribute": self.attribute,
            "relation": self.relation,
        }



class BiosQuestions:
    """The question side of ``BiosWorld`` (it needs the world's ``config``, ``person``, ``_people``,
    ``_check`` and ``_question_hashes``)."""

    def _who(self, person: Person, relation: str | None, rel_person: Person | None) -> tuple[str, str]:
        """("Name's mentor" or "Name", kinship word for the relation)."""
        if relation is None or rel_person is None:
            return person.name, ""
        if relation == "parent":
            word = "mother" if rel_person.female else "father"
        elif relation == "spouse":
            word = "wife" if rel_person.female else "husband"
        else:
            word = relation
        return f"{person.name}'s {word}", word

    def question(
        self,
        i: int,
        kind: str = "single",
        attribute: str | None = None,
        relation: str | None = None,
        variant: int | None = None,
        wording: str = "base",
        lead: str | None = None,
        lower_names: bool = False,
    ) -> Question:
        """A question about person ``i`` of ``kind`` ``"single"`` or ``"multi"``.

        ``attribute`` (single: one of :data:`ATTRIBUTES` or :data:`RELATIONS`; multi: one of
        :data:`ATTRIBUTES`), ``relation`` (multi only) and the phrasing ``variant`` default to
        choices hashed from ``(seed, i, kind)``. ``wording``: a split of ``msa.data.bios_text.WORDINGS``
        (the same person, attribute and variant hash in every split); ``lead``: a lead-in such as
        ``"Tell me: {q}"``; ``lower_names``: the names written lower-case. Raises ``ValueError`` when
        the question has no answer in this world (no such relation, or the related person is
        ``>= num_people``).
        """
        i = self._check(i)
        if i >= self.config.num_people:
            raise ValueError(f"person {i} is not in a world of {self.config.num_people} people")
        h = self._question_hashes(np.array([i], dtype=np.int64), kind)[0]
        return self._question(self.person(i), kind, attribute, relation, variant, h, self.person, wording, lead,
                              lower_names)  # fmt: skip

    def _question(
        self,
        person: Person,
        kind: str,
        attribute: str | None,
        relation: str | None,
        variant: int | None,
        h: int,
        lookup: Callable[[int], Person],
        wording: str = "base",
        lead: str | None = None,
        lower_names: bool = False,
    ) -> Question:
        i = person.index
        if wording == "polite" and lead is None:
            lead = HELDOUT_LEADS[(h >> 24) % len(HELDOUT_LEADS)]
        lower_names = lower_names or wording == "lowercase"

        def phrase(who: str, rel: str) -> str:
            templates = question_templates(attribute, wording)
            v = (h >> 16) % len(templates) if variant is None else variant % len(templates)
            name = person.name.lower() if lower_names else person.name
            text = templates[v].format(who=who.replace(person.name, name), rel=rel)
            return text if lead is None else lead_in(text, lead, templates[v].startswith("{who}"))

        if kind == "single":
            choices = ATTRIBUTES + RELATIONS
            if attribute is None:
                present = [a for a in choices if a not in RELATIONS or self._related_ok(person, a)]
                attribute = present[h % len(present)]
            if attribute not in choices:
                raise ValueError(f"unknown attribute {attribute!r}")
            if attribute in RELATIONS:
                target = self._related(person, attribute, lookup)
                answer, word = target.name, self._who(person, attribute, target)[1]
            else:
                answer, word = person.attribute(attribute), ""
            return Question(phrase(person.name, word), answer, (i,), "single", attribute, None)
        if kind != "multi":
            raise ValueError(f"kind must be 'single' or 'multi', got {kind!r}")
        if relation is None:
            present = [r for r in RELATIONS if self._related_ok(person, r)]
            if not present:
                raise ValueError(f"person {i} has no relation inside the world")
            relation = present[h % len(present)]
        target = self._related(person, relation, lookup)
        allowed = _MULTI_ATTRIBUTES[relation]
        if attribute is None:
            attribute = allowed[(h >> 8) % len(allowed)]
        if attribute not in allowed:
            raise ValueError(f"attribute {attribute!r} is not asked through relation {relation!r}")
        who, _ = self._who(person, relation, target)
        return Question(phrase(who, ""), target.attribute(attribute), (i, target.index), "multi", attribute, relation)

    def _related_ok(self, person: Person, relation: str) -> bool:
        j = person.relation(relation)
        return j is not None and j < self.config.num_people

    def _related(self, person: Person, relation: str, lookup: Callable[[int], Person]) -> Person:
        j = person.relation(relation)
        if j is None or j >= self.config.num_people:
            raise ValueError(f"person {person.index} has no {relation} inside a world of {self.config.num_people}")
        return lookup(j)

    def iter_questions(self, n: int, kind: str = "single", seed: int = 0, wording: str = "base") -> Iterator[Question]:
        """Yield ``n`` questions about people drawn uniformly (with replacement) with ``seed``.

        People without a usable relation are skipped for ``kind="multi"``; the sequence depends
        only on ``(config, n, kind, seed)`` and equals ``question(i, kind, wording=wording)`` for the
        drawn ``i`` (so every wording asks about the same people and attributes).
        """
        if kind not in ("single", "multi"):
            raise ValueError(f"kind must be 'single' or 'multi', got {kind!r}")
        if n > 0 and self.config.num_people == 0:
            raise ValueError("a world of 0 people has no questions")
        rng = np.random.default_rng([seed, self.config.seed, kind == "multi"])
        made = 0
        misses = 0
        while made < n:
            idx = rng.integers(0, self.config.num_people, size=min(4096, 2 * (n - made) + 8))
            people = self._people(idx)
            wanted = {
                j for p in people for r in RELATIONS if (j := p.relation(r)) is not None and j < self.config.num_people
            }
            targets = np.array(sorted(wanted), dtype=np.int64)
            by_index = dict(zip(targets.tolist(), self._people(targets))) if len(targets) else {}
            for person, h in zip(people, self._question_hashes(idx, kind)):
                try:
                    q = self._question(person, kind, None, None, None, h, by_index.__getitem__, wording)
                except ValueError:
                    misses += 1
                    if misses > 1000 + 100 * n:
                        raise ValueError("could not find people with relations in this world") from None
                    continue
                yield q
                made += 1
                if made == n:
                    return

    def write_questions_jsonl(self, path_or_file: PathOrFile, n: int, kind: str = "single", seed: int = 0) -> int:
        """Write ``n`` questions as ``{"question", "answer", "gold_ids", "kind", "attribute", "relation"}`` lines."""
        count = write_jsonl(path_or_file, (q.to_json() for q in self.iter_questions(n, kind, seed)))
        logger.info("wrote %d %s-hop bios questions", count, kind)
        return count
