"""Bios: a seeded, lazily generated world of fictional people for single- and multi-hop QA.

Every person ``i`` (``0 <= i < num_people``) is one memory document whose id is ``i``. The
document is a short English biography (about 40-90 tokens) such as::

    Amaora Duskstrom, born on June 5, 1940, was a native of Hartfield. Her mentor was Arisara
    Barstrom. Her mother was Galomelle Mordrick. She studied painting at Ardivan College. For
    most of her career, she worked for Pyrline Shipping in Hartport as a physician. She shared
    an office with Quelovald Raskton.

(``BiosWorld(BiosConfig(seed=0)).document(1)``).

Determinism and laziness
    Everything about person ``i`` is a function of ``(seed, i)`` only: attributes come from a
    counter-based hash (splitmix64) of ``(seed, i, field)``, so ``document(i)`` costs the same for
    ``i = 5`` and ``i = 20_000_000`` and nothing is materialised. ``num_people`` never changes a
    document: the first ``M`` documents of a world of ``N > M`` people are identical to the
    world of ``M`` people with the same seed (prefix stability), so memories of 16K..100M tokens
    contain one another.

Names
    Full names are ``"{first} {last}"`` drawn from syllable-built pools (no real-person lists;
    about 13 400 first names x 2 150 last names). Person ``i`` gets pair number ``perm(i)``, where
    ``perm`` is a seeded Feistel permutation of ``[0, F*L)``, so names are unique for every ``i``
    below :attr:`BiosWorld.capacity` (about 28.8 million people). Last names are prefix-free and
    first names have no capital after the first letter, so one full name is never a substring of
    another.

Relations (people are arranged in blocks of :data:`BLOCK` = 1024 consecutive ids)
    Inside a block a seeded bijection ranks the 1024 people; rank // 256 is the generation
    (0 = oldest, 3 = youngest, birth years 1905-1914, 1932-1941, 1959-1968, 1986-1995).

    * ``spouse``: ranks ``r`` and ``r ^ 1`` form a couple (same generation) and are married with
      probability 0.6; symmetric by construction.
    * ``colleague``: a second pairing inside each generation; both colleagues work for the same
      employer (hence in the same city); symmetric.
    * ``parent``: generations 1-3 have one parent in the previous generation (18-36 years older);
      the two members of a couple never share a parent.
    * ``mentor``: generations 1-3 have a mentor in the previous generation, never their parent.

    So every relation of person ``i`` points inside ``i``'s block. A world whose size is a multiple
    of 1024 is closed; in a world of other sizes the last block's documents may name people beyond
    ``num_people``, and questions are only generated when all their gold documents exist.

Questions
    single-hop: one attribute (or relation name) of one person, gold ``[i]``; the answer string
    occurs verbatim in document ``i``.
    multi-hop (2-hop): an attribute of a related person, gold ``[i, j]`` in that order, where
    document ``i`` names ``j`` by full name and the answer occurs verbatim in document ``j``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from msa.data.bios_questions import BiosQuestions, Question
from msa.data.bios_text import (
    ATTRIBUTES, RELATIONS, _COLLEAGUE, _EDUCATION, _FIELDS, _INTRO, _MENTOR, _MONTHS, _OCCUPATIONS, _PARENT, _SPOUSE,
    _WORK, _article, _orders, _pools,
)  # fmt: skip
from msa.data.jsonl import PathOrFile, write_jsonl

logger = logging.getLogger(__name__)

__all__ = [
    "ATTRIBUTES",
    "BLOCK",
    "RELATIONS",
    "BiosConfig",
    "BiosWorld",
    "Person",
    "Question",
]

BLOCK = 1024
"""Relations of a person point inside its block of ``BLOCK`` consecutive ids."""

_GEN = 256  # people per generation inside a block
_BIRTH_YEAR0 = 1905
_GEN_YEARS = 27
_YEAR_SPAN = 10


_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (a bijection; wraps modulo 2**64)."""
    x = x + _GOLDEN
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _key(seed: int, salt: int) -> np.uint64:
    with np.errstate(over="ignore"):
        mixed = _mix(np.array([(seed * 0x632BE59BD9B4E019 + salt) % 2**64], dtype=np.uint64))
    return mixed[0]


# Hash salts: one per independent random field.
(_S_NAME, _S_SIGMA_A, _S_SIGMA_C, _S_RHO_A, _S_RHO_C, _S_MARRY, _S_PARENT, _S_MENTOR, _S_YEAR,
 _S_DATE, _S_CITY, _S_UNI, _S_FIELD, _S_EMP, _S_EMP_CITY, _S_OCC, _S_STYLE, _S_ORDER,
 _S_QUESTION) = range(19)


def _inverse_odd(a: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of odd ``a`` modulo ``2**bits`` (Newton iteration; each step doubles the bits)."""
    mask = _U64((1 << bits) - 1)
    inv = a.copy()
    for _ in range(5):
        inv = (inv * (_U64(2) - a * inv)) & mask
    return inv



@dataclass(frozen=True)
class BiosConfig:
    """Configuration of a bios world.

    Attributes:
        num_people: number of people = documents (ids ``0..num_people-1``). Use a multiple of
            :data:`BLOCK` for a world closed under relations.
        seed: world seed; everything is a pure function of ``(seed, person index)``.
        marriage_rate: probability that a couple (ranks ``r``, ``r ^ 1``) is married.
    """

    num_people: int = 1024
    seed: int = 0
    marriage_rate: float = 0.6


@dataclass(frozen=True)
class Person:
    """All facts about one person. Relations are person indices or ``None``."""

    index: int
    name: str
    female: bool
    birth_date: str
    birth_year: int
    birth_city: str
    university: str
    field: str
    employer: str
    employer_city: str
    occupation: str
    generation: int
    mentor: int | None
    parent: int | None
    spouse: int | None
    colleague: int | None

    def attribute(self, name: str) -> str:
        """The answer string of attribute ``name`` (one of :data:`ATTRIBUTES`)."""
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}; expected one of {ATTRIBUTES}")
        return str(getattr(self, name))

    def relation(self, name: str) -> int | None:
        """Index of the person related by ``name`` (one of :data:`RELATIONS`), or ``None``."""
        if name not in RELATIONS:
            raise ValueError(f"unknown relation {name!r}; expected one of {RELATIONS}")
        return getattr(self, name)


@dataclass
class _Batch:
    """Integer facts for a batch of people (all arrays have the batch's length)."""

    idx: np.ndarray
    first: np.ndarray
    last: np.ndarray
    female: np.ndarray
    generation: np.ndarray
    year: np.ndarray
    month: np.ndarray
    day: np.ndarray
    city: np.ndarray
    uni: np.ndarray
    field: np.ndarray
    employer: np.ndarray
    employer_city: np.ndarray
    occupation: np.ndarray
    mentor: np.ndarray  # -1 = none
    parent: np.ndarray
    spouse: np.ndarray
    colleague: np.ndarray
    style: np.ndarray
    order: np.ndarray


class BiosWorld(BiosQuestions):
    """A lazily generated world of ``config.num_people`` fictional people (see module docstring).

    Nothing is precomputed per person; ``document(i)`` and ``person(i)`` are O(1) and
    ``iter_documents`` works in vectorised batches.
    """

    def __init__(self, config: BiosConfig) -> None:
        self.config = config
        pools = _pools()
        self._pools = pools
        self.capacity = len(pools.first) * len(pools.last)
        if not 0 <= config.num_people <= self.capacity:
            raise ValueError(f"num_people must be in [0, {self.capacity}], got {config.num_people}")
        if not 0.0 <= config.marriage_rate <= 1.0:
            raise ValueError(f"marriage_rate must be in [0, 1], got {config.marriage_rate}")
        self._keys = [_key(config.seed, salt) for salt in range(_S_QUESTION + 1)]
        self._marry_threshold = _U64(min(int(config.marriage_rate * 2.0**64), 2**64 - 1))
        bits = max(2, int(self.capacity - 1).bit_length())
        self._half = (bits + 1) // 2
        self._names_cache: tuple[list[str], list[str], list[str]] | None = None
        self._name_index: tuple | None = None  # (order, sorted keys) of first and last names; namesakes()

    def __len__(self) -> int:
        return self.config.num_people

    def _h(self, x: np.ndarray, salt: int) -> np.ndarray:
        return _mix(x ^ self._keys[salt])

    def _name_pair(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Seeded Feistel permutation of [0, F*L) with cycle walking -> (first, last) indices."""
        half = _U64(self._half)
        mask = _U64((1 << self._half) - 1)
        cap = _U64(self.capacity)
        x = idx.copy()
        todo = np.ones(x.shape, dtype=bool)
        out = np.empty_like(x)
        key = self._keys[_S_NAME]
        while todo.any():
            v = x[todo]
            left, right = v >> half, v & mask
            for rnd in range(4):
                f = _mix(right ^ key ^ _U64(rnd * 0x9E37)) & mask
                left, right = right, left ^ f
            v = (left << half) | right
            done = v < cap
            sel = np.flatnonzero(todo)
            out[sel[done]] = v[done]
            x[sel] = v
            todo[sel[done]] = False
        last_n = _U64(len(self._pools.last))
        return (out // last_n).astype(np.int64), (out % last_n).astype(np.int64)

    def _facts(self, idx: np.ndarray) -> _Batch:
        """Vectorised facts for person indices ``idx`` (int64 array)."""
        with np.errstate(over="ignore"):
            return self._facts_unchecked(idx.astype(np.uint64))

    def _facts_unchecked(self, u: np.ndarray) -> _Batch:
        pools = self._pools
        bmask = _U64(BLOCK - 1)
        block = u >> _U64(10)
        pos = u & bmask
        base = block << _U64(10)

        # Block ranking sigma(p) = a*p + c (mod 1024), a odd; generation = rank // 256.
        a = self._h(block, _S_SIGMA_A) | _U64(1)
        a &= bmask
        c = self._h(block, _S_SIGMA_C) & bmask
        a_inv = _inverse_odd(a, 10)
        rank = (a * pos + c) & bmask
        gen = rank >> _U64(8)
        within = rank & _U64(_GEN - 1)

        def person_at(r: np.ndarray) -> np.ndarray:
            return (base + ((a_inv * (r - c)) & bmask)).astype(np.int64)

        # Couples: ranks r and r ^ 1.
        couple = (block << _U64(10)) | (rank >> _U64(1))
        married = self._h(couple, _S_MARRY) < self._marry_threshold
        spouse = np.where(married, person_at(rank ^ _U64(1)), -1)

        # Colleague pairs: rho(w) = a2*w + c2 (mod 256) within a generation; partner rho^-1(rho(w) ^ 2).
        # a2 is odd, so the partner is never the spouse (rho(w ^ 1) - rho(w) = +-a2 != +-2).
        gmask = _U64(_GEN - 1)
        a2 = (self._h(block, _S_RHO_A) | _U64(1)) & gmask
        c2 = self._h(block, _S_RHO_C) & gmask
        a2_inv = _inverse_odd(a2, 8)
        x = (a2 * within + c2) & gmask
        partner_w = (a2_inv * ((x ^ _U64(2)) - c2)) & gmask
        colleague = person_at((gen << _U64(8)) | partner_w)
        pair_id = (((block << _U64(2)) | gen) << _U64(8)) | (x & _U64(_GEN - 1 - 2))

        # Parent and mentor live in the previous generation. Parent keeps the low bit of the child's
        # within-generation rank, so the two members of a couple have different parents.
        has_elder = gen > _U64(0)
        prev = (gen - _U64(1)) << _U64(8)
        p_w = ((self._h(u, _S_PARENT) & _U64(127)) << _U64(1)) | (within & _U64(1))
        m_w = self._h(u, _S_MENTOR) & gmask
        m_w = np.where(m_w == p_w, m_w ^ _U64(16), m_w)
        parent = np.where(has_elder, person_at(prev | p_w), -1)
        mentor = np.where(has_elder, person_at(prev | m_w), -1)

        first, last = self._name_pair(u)
        female = pools.first_female[first]
        year = _BIRTH_YEAR0 + _GEN_YEARS * gen.astype(np.int64) + (
            self._h(u, _S_YEAR) % _U64(_YEAR_SPAN)
        ).astype(np.int64)
        date_h = self._h(u, _S_DATE)
        month = (date_h % _U64(12)).astype(np.int64)
        day = ((date_h >> _U64(8)) % _U64(28)).astype(np.int64) + 1
        employer = (self._h(pair_id, _S_EMP) % _U64(len(pools.employers))).astype(np.int64)
        emp_city = (
            _mix(employer.astype(np.uint64) ^ self._keys[_S_EMP_CITY]) % _U64(len(pools.cities))
        ).astype(np.int64)
        return _Batch(
            idx=u.astype(np.int64),
            first=first,
            last=last,
            female=female,
            generation=gen.astype(np.int64),
            year=year,
            month=month,
            day=day,
            city=(self._h(u, _S_CITY) % _U64(len(pools.cities))).astype(np.int64),
            uni=(self._h(u, _S_UNI) % _U64(len(pools.universities))).astype(np.int64),
            field=(self._h(u, _S_FIELD) % _U64(len(_FIELDS))).astype(np.int64),
            employer=employer,
            employer_city=emp_city,
            occupation=(self._h(u, _S_OCC) % _U64(len(_OCCUPATIONS))).astype(np.int64),
            mentor=mentor,
            parent=parent,
            spouse=spouse,
            colleague=colleague,
            style=self._h(u, _S_STYLE),
            order=self._h(u, _S_ORDER),
        )

    def namesakes(self, i: int) -> np.ndarray:
        """People of this world other than ``i`` who share ``i``'s first or last name (int64, sorted).

        The first call builds an index over all ``num_people`` names (vectorised, ~1 s per million)."""
        if self._name_index is None:
            first, last = self._name_pair(np.arange(self.config.num_people, dtype=np.uint64))
            self._name_index = tuple((np.argsort(k, kind="stable"), np.sort(k)) for k in (first, last))
        f, l_ = (int(x[0]) for x in self._name_pair(np.array([self._check(i)], dtype=np.uint64)))
        out = []
        for (order, keys), key in zip(self._name_index, (f, l_)):
            lo, hi = np.searchsorted(keys, key, "left"), np.searchsorted(keys, key, "right")
            out.append(order[lo:hi])
        both = np.unique(np.concatenate(out))
        return both[both != i].astype(np.int64)

    def _names(self, idx: np.ndarray) -> list[str]:
        first, last = self._name_pair(idx.astype(np.uint64))
        fp, lp = self._pools.first, self._pools.last
        return [fp[f] + " " + lp[g] for f, g in zip(first.tolist(), last.tolist())]

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.capacity:
            raise IndexError(f"person index {i} outside [0, {self.capacity})")
        return i

    def name(self, i: int) -> str:
        """Full name ``"First Last"`` of person ``i`` (unique for ``i < capacity``)."""
        return self._names(np.array([self._check(i)], dtype=np.int64))[0]

    def names(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Full names of people ``start..stop-1`` (``stop`` defaults to ``num_people``)."""
        stop = self.config.num_people if stop is None else stop
        if not 0 <= start <= stop <= self.capacity:
            raise ValueError(f"need 0 <= start <= stop <= {self.capacity}, got {start}, {stop}")
        return self._names(np.arange(start, stop, dtype=np.int64))

    def person(self, i: int) -> Person:
        """All facts about person ``i`` (also valid for ``i >= num_people``, below capacity)."""
        return self._people(np.array([self._check(i)], dtype=np.int64))[0]

    def _people(self, idx: np.ndarray) -> list[Person]:
        """Vectorised :meth:`person` for an int64 array of indices below capacity."""
        b = self._facts(idx)
        pools = self._pools
        names = self._names(b.idx)

        def rel(v: int) -> int | None:
            return None if v < 0 else v

        cols = zip(
            b.idx.tolist(), names, b.female.tolist(), b.year.tolist(), b.month.tolist(), b.day.tolist(),
            b.city.tolist(), b.uni.tolist(), b.field.tolist(), b.employer.tolist(), b.employer_city.tolist(),
            b.occupation.tolist(), b.generation.tolist(), b.mentor.tolist(), b.parent.tolist(),
            b.spouse.tolist(), b.colleague.tolist(),
        )  # fmt: skip
        return [
            Person(
                index=i,
                name=name,
                female=female,
                birth_date=f"{_MONTHS[month]} {day}, {year}",
                birth_year=year,
                birth_city=pools.cities[city],
                university=pools.universities[uni],
                field=_FIELDS[field],
                employer=pools.employers[emp],
                employer_city=pools.cities[ecity],
                occupation=_OCCUPATIONS[occ],
                generation=gen,
                mentor=rel(mentor),
                parent=rel(parent),
                spouse=rel(spouse),
                colleague=rel(colleague),
            )
            for (i, name, female, year, month, day, city, uni, field, emp, ecity, occ, gen, mentor, parent, spouse,
                 colleague) in cols
        ]  # fmt: skip

    def _render(self, idx: np.ndarray) -> list[str]:
        """Documents of the people ``idx`` (vectorised facts, one Python loop for the text)."""
        b = self._facts(idx)
        pools = self._pools
        names = self._names(b.idx)
        rel_idx = np.concatenate([b.mentor, b.parent, b.spouse, b.colleague])
        rel_has = rel_idx >= 0
        rel_names_flat = [""] * len(rel_idx)
        for k, nm in zip(np.flatnonzero(rel_has).tolist(), self._names(rel_idx[rel_has])):
            rel_names_flat[k] = nm
        n = len(idx)
        rel_female = np.zeros(len(rel_idx), dtype=bool)
        if rel_has.any():
            rel_female[rel_has] = pools.first_female[self._name_pair(rel_idx[rel_has].astype(np.uint64))[0]]
        rel_female_l = rel_female.tolist()

        orders = _orders()
        cities, unis, emps, firsts = pools.cities, pools.universities, pools.employers, pools.first
        occ_a = [_article(o) for o in _OCCUPATIONS]
        docs: list[str] = []
        cols = zip(
            names, b.first.tolist(), b.female.tolist(), b.year.tolist(), b.month.tolist(),
            b.day.tolist(), b.city.tolist(), b.uni.tolist(), b.field.tolist(), b.employer.tolist(),
            b.employer_city.tolist(), b.occupation.tolist(), b.style.tolist(), b.order.tolist(),
        )
        for k, (name, fi, female, year, month, day, city, uni, field, emp, ecity, occ, style, order) in enumerate(cols):
            if female:
                pron, poss = "she", "her"
            else:
                pron, poss = "he", "his"
            use_name = style & 1
            subj = firsts[fi] if use_name else pron.capitalize()
            subj_l = firsts[fi] if use_name else pron
            poss_c = (firsts[fi] + "'s") if use_name else poss.capitalize()
            f = {
                "name": name, "pron": pron, "S": subj, "s": subj_l, "P": poss_c, "p": poss,
                "date": f"{_MONTHS[month]} {day}, {year}", "city": cities[city], "uni": unis[uni],
                "field": _FIELDS[field], "emp": emps[emp], "ecity": cities[ecity], "occ": occ_a[occ],
            }
            intro = _INTRO[(style >> 1) % len(_INTRO)].format_map(f)
            body = [
                _EDUCATION[(style >> 4) % len(_EDUCATION)].format_map(f),
                _WORK[(style >> 8) % len(_WORK)].format_map(f),
            ]
            for r, (templates, shift) in enumerate(((_MENTOR, 12), (_PARENT, 16), (_SPOUSE, 20), (_COLLEAGUE, 24))):
                x = rel_names_flat[r * n + k]
                if not x:
                    continue
                rf = rel_female_l[r * n + k]
                f["x"] = x
                if r == 1:
                    f["rel"] = "mother" if rf else "father"
                    f["child"] = "daughter" if female else "son"
                elif r == 2:
                    f["rel"] = "wife" if rf else "husband"
                body.append(templates[(style >> shift) % len(templates)].format_map(f))
            perms = orders[len(body)]
            perm = perms[order % len(perms)]
            docs.append(" ".join([intro] + [body[j] for j in perm]))
        return docs

    def document(self, i: int) -> str:
        """Text of document ``i`` (the biography of person ``i``); depends only on ``(seed, i)``."""
        return self._render(np.array([self._check(i)], dtype=np.int64))[0]

    def documents(self, ids: Sequence[int]) -> list[str]:
        """Texts of the documents ``ids`` (any order), rendered in one vectorised batch."""
        idx = np.asarray([self._check(i) for i in ids], dtype=np.int64)
        return self._render(idx) if len(idx) else []

    def iter_documents(self, start: int = 0, stop: int | None = None, batch_size: int = 4096) -> Iterator[str]:
        """Yield documents ``start..stop-1`` (``stop`` defaults to ``num_people``) in id order."""
        stop = self.config.num_people if stop is None else stop
        if not 0 <= start <= stop <= self.capacity:
            raise ValueError(f"need 0 <= start <= stop <= {self.capacity}, got {start}, {stop}")
        for lo in range(start, stop, batch_size):
            yield from self._render(np.arange(lo, min(lo + batch_size, stop), dtype=np.int64))

    def _question_hashes(self, idx: np.ndarray, kind: str) -> list[int]:
        with np.errstate(over="ignore"):
            return self._h(idx.astype(np.uint64) * _U64(2) + _U64(kind == "multi"), _S_QUESTION).tolist()

    def write_documents_jsonl(self, path_or_file: PathOrFile, n: int | None = None, start: int = 0) -> int:
        """Write documents ``start..start+n-1`` (default: all) as ``{"id": int, "text": str}`` lines."""
        stop = self.config.num_people if n is None else start + n
        docs = self.iter_documents(start, stop)
        count = write_jsonl(path_or_file, ({"id": start + k, "text": t} for k, t in enumerate(docs)))
        logger.info("wrote %d bios documents", count)
        return count
