"""The words of the bios world: name and value pools, biography sentence templates, question wordings.

Question wordings come in splits so that robustness is measured on wordings a model never trained on:
``base`` (the three phrasings per attribute msa-bios-tiny was trained with), ``train`` (base plus
more paraphrases, for training), ``paraphrase`` (held-out paraphrases, never in training), and the
held-out lead-ins of ``polite``; ``lowercase`` is the base wording with the names lower-cased.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

ATTRIBUTES: tuple[str, ...] = (
    "birth_date",
    "birth_city",
    "university",
    "field",
    "employer",
    "employer_city",
    "occupation",
)
"""Attributes asked about, in single-hop questions and at the end of multi-hop chains."""

RELATIONS: tuple[str, ...] = ("mentor", "parent", "spouse", "colleague")
"""Relations between people; in a single-hop question a relation is asked as a name."""

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)

_FIELDS = (
    "physics", "chemistry", "mathematics", "astronomy", "geology", "marine biology", "botany",
    "zoology", "economics", "history", "philosophy", "linguistics", "architecture", "medicine",
    "law", "music", "painting", "sculpture", "civil engineering", "mechanical engineering",
    "electrical engineering", "computer science", "statistics", "sociology", "psychology",
    "anthropology", "archaeology", "agriculture", "forestry", "oceanography", "meteorology",
    "literature", "journalism", "theater", "nursing", "pharmacy", "veterinary science",
    "political science", "urban planning", "materials science",
)

_OCCUPATIONS = (
    "accountant", "architect", "baker", "biologist", "bookbinder", "cartographer", "chemist",
    "clockmaker", "composer", "curator", "dentist", "designer", "diplomat", "editor", "engineer",
    "economist", "geologist", "glassblower", "historian", "illustrator", "interpreter", "jeweler",
    "judge", "librarian", "lighthouse keeper", "machinist", "mathematician", "midwife", "navigator",
    "nurse", "optician", "pharmacist", "photographer", "physician", "pilot", "potter", "printer",
    "surveyor", "teacher", "translator", "veterinarian", "violinist",
)

_EMPLOYER_SUFFIXES = (
    "Systems", "Laboratories", "Holdings", "Foods", "Analytics", "Press", "Instruments", "Logistics",
    "Textiles", "Pharmaceuticals", "Engineering", "Media", "Motors", "Robotics", "Energy",
    "Shipping", "Optics", "Mining", "Insurance", "Publishing",
)



def _prefix_free(words: set[str]) -> tuple[str, ...]:
    """Drop every word that is a proper prefix of another (sorted order makes this one pass)."""
    ordered = sorted(words)
    return tuple(w for w, nxt in zip(ordered, ordered[1:] + [""]) if not nxt.startswith(w))


@dataclass(frozen=True)
class _Pools:
    first: tuple[str, ...]
    first_female: np.ndarray  # [F] bool
    last: tuple[str, ...]
    cities: tuple[str, ...]
    universities: tuple[str, ...]
    employers: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def _pools() -> _Pools:
    """Build the fixed name pools (identical for every seed; the seed only permutes assignment)."""
    onsets = (
        "Al Am An Ar Bel Bram Cal Cor Dal Dar Del Dor El Em Fal Fen Gal Ger Hal Hel Il Is Jor Kal "
        "Kel Lor Lys Mar Mer Mir Nal Nor Or Os Per Quel Ral Ros Sel Sol Tal Tor Ul Val Ven Wen Yor Zel"
    ).split()
    middles = ("", "a", "e", "i", "o", "ad", "an", "en", "er", "id", "is", "om", "ov", "ur")
    female_ends = ("a", "ina", "elle", "ara", "ys", "ine", "ia", "wen", "eth", "ora")
    male_ends = ("o", "an", "ric", "us", "in", "ar", "as", "ion", "ed", "ald")
    first_gender: dict[str, bool] = {}
    for onset, middle in itertools.product(onsets, middles):
        for ends, female in ((female_ends, True), (male_ends, False)):
            for end in ends:
                name = onset + middle + end
                # Skip awkward triple letters; keep the first gender a spelling was built with.
                if any(a == b == c for a, b, c in zip(name, name[1:], name[2:])):
                    continue
                first_gender.setdefault(name, female)
    first = tuple(sorted(first_gender))
    first_female = np.array([first_gender[n] for n in first], dtype=bool)

    heads = (
        "Ash Bar Bren Carr Dalm Dren Elm Farr Gald Grev Hask Hol Ister Jarv Kest Lind Marl Mord "
        "Norr Osk Pell Quen Rask Renn Sarn Stav Tarn Tess Ulm Varn Vess Wald Wyn Yarr Zorn Brack "
        "Corv Dusk Fenn Harl Kerr Lask Morr Ness Orr Pask Rood Selk Thorn Vard"
    ).split()
    tails = (
        "ane ard by dale den dane ell ett field ford gard holt ick ington is ley low mere mont more "
        "ner ock ow rick sen ski son stead ster strom ton ven vik wick win worth ova ault ery arsk "
        "idge ish ard eau us"
    ).split()
    last = _prefix_free({h + t for h, t in itertools.product(heads, tails)} - set(first))

    city_heads = (
        "Aber Bal Cairn Dun Ebb Fal Glen Hart Ivor Kil Lan Mon Nor Ost Pen Quar Ros Strath Tre Vel"
    ).split()
    city_tails = "bury holm mouth haven mere ford wick stead port vale gate field crest moor".split()
    cities = _prefix_free({h + t for h, t in itertools.product(city_heads, city_tails)})

    uni_stems = tuple(
        h + t
        for h, t in itertools.product(
            "Ard Bel Cre Dom Esk Gar Hel Ith Lor Mal Ner Or Pra Sel Tav Ved".split(),
            "anthe ory ellis ivan orum ester ingham".split(),
        )
    )
    uni_forms = ("{} University", "University of {}", "{} Institute of Technology", "{} College")
    universities = tuple(
        uni_forms[k % len(uni_forms)].format(stem) for k, stem in enumerate(uni_stems)
    )

    emp_stems = tuple(
        h + t
        for h, t in itertools.product(
            "Bran Cor Dax Ever Fal Gry Hex Lum Mav Nim Oak Pyr Quin Sol Tan Vox".split(),
            "del ris tron ven ora ex ium line".split(),
        )
    )
    employers = tuple(
        f"{stem} {suffix}"
        for k, stem in enumerate(emp_stems)
        for suffix in (_EMPLOYER_SUFFIXES[k % 20], _EMPLOYER_SUFFIXES[(k * 7 + 3) % 20])
    )
    return _Pools(first, first_female, last, cities, universities, employers)


# Placeholders: {S} subject (pronoun or first name, capitalised), {s} same lower-case where it can
# be a pronoun, {P}/{p} possessive, {x} related person's full name, {rel} kinship word.

_INTRO = (
    "{name} was born on {date} in {city}.",
    "{name} was born in {city} on {date}.",
    "{name}, born on {date}, was a native of {city}.",
    "{name} came from {city}, where {pron} was born on {date}.",
    "On {date}, {name} was born in {city}.",
)
_EDUCATION = (
    "{S} studied {field} at {uni}.",
    "{S} earned a degree in {field} from {uni}.",
    "At {uni}, {s} studied {field}.",
    "{S} graduated from {uni} with a degree in {field}.",
    "{S} attended {uni}, where {pron} focused on {field}.",
)
_WORK = (
    "{S} worked as {occ} at {emp} in {ecity}.",
    "{S} was employed by {emp} in {ecity} as {occ}.",
    "{S} held a position as {occ} at {emp}, based in {ecity}.",
    "For most of {p} career, {s} worked for {emp} in {ecity} as {occ}.",
)
_MENTOR = (
    "{P} mentor was {x}.",
    "{S} was mentored by {x}.",
    "{x} served as {p} mentor.",
    "{S} trained under the guidance of {x}.",
)
_PARENT = (
    "{P} {rel} was {x}.",
    "{x} was {p} {rel}.",
    "{S} was raised by {p} {rel}, {x}.",
    "{S} was the {child} of {x}.",
)
_SPOUSE = (
    "{S} was married to {x}.",
    "{P} {rel} was {x}.",
    "{S} married {x}.",
    "{x} was {p} spouse.",
)
_COLLEAGUE = (
    "{P} colleague was {x}.",
    "{S} worked alongside {x}.",
    "Among {p} colleagues was {x}.",
    "{S} shared an office with {x}.",
)

_SINGLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": ("When was {who} born?", "What is the birth date of {who}?", "On what date was {who} born?"),
    "birth_city": ("Where was {who} born?", "In which city was {who} born?", "What is the birthplace of {who}?"),
    "university": (
        "Which university did {who} attend?",
        "Where did {who} study?",
        "From which university did {who} graduate?",
    ),
    "field": (
        "What did {who} study?",
        "What was the field of study of {who}?",
        "In which field did {who} earn a degree?",
    ),
    "employer": ("Which company did {who} work for?", "Who employed {who}?", "Where did {who} work?"),
    "employer_city": (
        "In which city did {who} work?",
        "Where was the employer of {who} based?",
        "In what city was the workplace of {who}?",
    ),
    "occupation": ("What was the occupation of {who}?", "What did {who} do for a living?", "What job did {who} hold?"),
    "mentor": ("Who was the mentor of {who}?", "Who mentored {who}?", "Who was {who}'s mentor?"),
    "parent": ("Who was the {rel} of {who}?", "Who was {who}'s {rel}?", "Name the {rel} of {who}."),
    "spouse": ("Who was {who} married to?", "Who was the spouse of {who}?", "Who was {who}'s {rel}?"),
    "colleague": ("Who was a colleague of {who}?", "Who worked alongside {who}?", "Who was {who}'s colleague?"),
}

# Multi-hop attributes that are not answered by the related document alone (a colleague's
# employer is also in the first document) are excluded.
_MULTI_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "mentor": ATTRIBUTES,
    "parent": ATTRIBUTES,
    "spouse": ATTRIBUTES,
    "colleague": tuple(a for a in ATTRIBUTES if a not in ("employer", "employer_city")),
}

# All orders of up to 6 body sentences, indexed by a hash.
_MAX_BODY = 6


@functools.lru_cache(maxsize=1)
def _orders() -> tuple[tuple[tuple[int, ...], ...], ...]:
    return tuple(tuple(itertools.permutations(range(n))) for n in range(_MAX_BODY + 1))


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# Extra training phrasings, {who} = the person (or "X's mother"), {rel} = kinship word.
_TRAIN_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "birth_date": ("What was the date of birth of {who}?", "Give the birth date of {who}.", "{who} was born on which date?"),
    "birth_city": ("Which city was {who} born in?", "Where did {who} come from?", "{who} was born in which city?"),
    "university": ("Which school did {who} graduate from?", "What university did {who} go to?", "{who} studied at which university?"),
    "field": ("Which subject did {who} study?", "What was {who}'s field?", "{who} earned a degree in what?"),
    "employer": ("What company employed {who}?", "Who was the employer of {who}?", "{who} worked for which company?"),
    "employer_city": ("Which city did {who} work in?", "Where was {who}'s workplace?", "{who} worked in which city?"),
    "occupation": ("What was {who}'s job?", "What work did {who} do?", "{who} worked as what?"),
    "mentor": ("Who trained {who}?", "Name the mentor of {who}.", "{who} was mentored by whom?"),
    "parent": ("Who is the {rel} of {who}?", "Give the name of {who}'s {rel}.", "{who}'s {rel} was who?"),
    "spouse": ("Whom did {who} marry?", "Who was {who}'s spouse?", "{who} was married to whom?"),
    "colleague": ("Name a colleague of {who}.", "Who shared an office with {who}?", "{who} worked with whom?"),
}

# Held-out phrasings: never used in training.
_HELDOUT_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "birth_date": ("On which day did {who} come into the world?", "Tell me the day {who} was born.", "What day was {who} born on?"),
    "birth_city": ("Name the town where {who} was born.", "What was the hometown of {who}?", "{who} is a native of which place?"),
    "university": ("Name the university {who} attended.", "At which university was {who} a student?", "What was the alma mater of {who}?"),
    "field": ("What subject did {who} major in?", "Name the discipline {who} studied.", "What was the academic field of {who}?"),
    "employer": ("Name the company {who} worked at.", "Which firm was {who} with?", "What organisation did {who} work at?"),
    "employer_city": ("Name the city where {who} was employed.", "In which town was {who}'s job?", "Where was {who} employed?"),
    "occupation": ("What was {who}'s profession?", "Name the profession of {who}.", "How did {who} earn a living?"),
    "mentor": ("Who guided {who} as a mentor?", "Whose guidance did {who} train under?", "Name the person who mentored {who}."),
    "parent": ("Who was {who}'s {rel}, by name?", "Tell me the name of the {rel} of {who}.", "Which person was the {rel} of {who}?"),
    "spouse": ("Name the person {who} married.", "Who was the partner of {who} in marriage?", "To whom was {who} married?"),
    "colleague": ("Name someone who worked alongside {who}.", "Who was a co-worker of {who}?", "Which person was {who}'s colleague?"),
}

TRAIN_LEADS: tuple[str, ...] = ("Tell me: {q}", "Quick question: {q}", "I want to know: {q}", "Find out: {q}",
                                "Question: {q}", "Answer this: {q}")  # fmt: skip
HELDOUT_LEADS: tuple[str, ...] = ("Please tell me, {q}", "Could you let me know, {q}", "I'd like to know, {q}")
WORDINGS: tuple[str, ...] = ("base", "train", "paraphrase", "polite", "lowercase")


def question_templates(attribute: str, wording: str) -> tuple[str, ...]:
    """The phrasings of a question about ``attribute`` in a wording split (see the module docstring)."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    if wording == "train":
        return _SINGLE_TEMPLATES[attribute] + _TRAIN_PARAPHRASES[attribute]
    if wording == "paraphrase":
        return _HELDOUT_PARAPHRASES[attribute]
    return _SINGLE_TEMPLATES[attribute]


def lead_in(question: str, lead: str, starts_with_name: bool) -> str:
    """``question`` behind a lead-in; its first word is lower-cased unless it is a name."""
    return lead.format(q=question if starts_with_name else question[:1].lower() + question[1:])
