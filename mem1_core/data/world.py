"""A seeded synthetic multi-hop world: the embedded default data and the test data.

People, films, cities and companies, linked by functional relations (born_in, works_for,
directed_by, produced_by, founded_by, headquartered_in) plus one number each (birth / release /
founding year, population). Every entity has one short document stating its own facts in plain
sentences, so each 1-hop question is answerable from one document and each 2-hop question from
two. Names are built from syllables and every name carries one word no other entity uses, so a
lexical retriever (BM25) can find the document a question is about. Same seed, same world.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from tqdm import tqdm

from mem1_core.config import WorldConfig
from mem1_core.data.types import Document, QAItem

KINDS = ("person", "film", "city", "company")

# relation -> (subject kind, object kind); every relation is functional (one object per subject).
RELATIONS: dict[str, tuple[str, str]] = {
    "born_in": ("person", "city"),
    "works_for": ("person", "company"),
    "directed_by": ("film", "person"),
    "produced_by": ("film", "company"),
    "founded_by": ("company", "person"),
    "headquartered_in": ("company", "city"),
}

# The one number each kind carries.
ATTRIBUTE: dict[str, str] = {
    "person": "birth_year",
    "film": "release_year",
    "company": "founding_year",
    "city": "population",
}

# Questions about an entity of a kind; {x} is its name (1-hop) or a bridge phrase (2-hop).
QUESTIONS: dict[str, list[tuple[str, str]]] = {
    "person": [
        ("born_in", "In which city was {x} born?"),
        ("works_for", "Which company does {x} work for?"),
        ("birth_year", "In which year was {x} born?"),
    ],
    "film": [
        ("directed_by", "Who directed {x}?"),
        ("produced_by", "Which company produced {x}?"),
        ("release_year", "In which year was {x} released?"),
    ],
    "company": [
        ("founded_by", "Who founded {x}?"),
        ("headquartered_in", "In which city is {x} headquartered?"),
        ("founding_year", "In which year was {x} founded?"),
    ],
    "city": [("population", "What is the population of {x}?")],
}

# How the object of a relation is described through its subject (the first hop of a 2-hop question).
BRIDGES: dict[str, str] = {
    "born_in": "the city where {e} was born",
    "works_for": "the company that {e} works for",
    "directed_by": "the director of the film {e}",
    "produced_by": "the company that produced the film {e}",
    "founded_by": "the founder of {e}",
    "headquartered_in": "the city where {e} is headquartered",
}

_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "pl", "st", "tr", "th", "sh", "w")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "ia")
_CODAS = ("", "", "", "n", "r", "s", "l", "k", "x", "th", "m", "nd")
_FILM_NOUNS = ("Harbor", "Garden", "Promise", "Winter", "Echo", "River", "Lantern", "Horizon", "Letter",
               "Voyage", "Shadow", "Summer", "Station", "Mirror", "Crossing", "Orchard")  # fmt: skip
_COMPANY_SUFFIXES = ("Labs", "Industries", "Systems", "Works", "Group", "Motors", "Foods", "Media",
                     "Energy", "Holdings")  # fmt: skip

# Words a name must not be: stopwords (BM25 drops them; added in build_world) and template words.
_TEMPLATE_WORDS = frozenset({
    "city", "film", "born", "work", "works", "company", "founded", "founder", "director", "directed",
    "produced", "released", "year", "population", "headquartered", "which", "where", "when",
})  # fmt: skip


@dataclass(frozen=True)
class Entity:
    """One thing in the world; its id is also the id of its document."""

    id: str
    kind: str
    name: str
    value: int  # the kind's ATTRIBUTE: a year, or a population for cities
    links: dict[str, str] = field(default_factory=dict)  # relation -> object entity id

    @property
    def subject(self) -> str:
        """How a question names this entity."""
        return f"the film {self.name}" if self.kind == "film" else self.name


@dataclass
class World:
    """Entities, their documents, and deterministic question generation."""

    config: WorldConfig
    entities: dict[str, Entity]
    documents: list[Document]
    _docs_by_id: dict[str, Document] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._docs_by_id = {d.id: d for d in self.documents}

    def document(self, doc_id: str) -> Document:
        return self._docs_by_id[doc_id]

    def answer(self, entity: Entity, key: str) -> str:
        """The gold answer to question `key` (a relation or the kind's attribute) about `entity`."""
        if key in entity.links:
            return self.entities[entity.links[key]].name
        if key == ATTRIBUTE[entity.kind]:
            return str(entity.value)
        raise KeyError(f"{entity.kind} {entity.id} has no relation or attribute {key!r}")

    def candidates(self, hops: Iterable[int] = (1, 2)) -> list[tuple[str, str | None, str]]:
        """Every question the world can ask: (entity id, bridge relation or None, asked key)."""
        hops = set(hops)
        bad = hops - {1, 2}
        if bad:
            raise ValueError(f"synthetic questions have 1 or 2 hops, not {sorted(bad)}")
        out: list[tuple[str, str | None, str]] = []
        for e in self.entities.values():
            if 1 in hops:
                out.extend((e.id, None, key) for key, _ in QUESTIONS[e.kind])
            if 2 in hops:
                for rel, target in e.links.items():
                    kind = self.entities[target].kind
                    out.extend((e.id, rel, key) for key, _ in QUESTIONS[kind])
        return out

    def make_question(self, entity_id: str, bridge: str | None, key: str) -> QAItem:
        e = self.entities[entity_id]
        if bridge is None:
            asked, phrase, support = e, e.subject, (e,)
        else:
            asked = self.entities[e.links[bridge]]
            phrase, support = BRIDGES[bridge].format(e=e.name), (e, asked)
        template = dict(QUESTIONS[asked.kind])[key]
        question = template.format(x=phrase)
        question = question[0].upper() + question[1:]
        docs = tuple(self.document(s.id) for s in support)
        qid = f"world{self.config.seed}-{entity_id}-{bridge or 'self'}-{key}"
        return QAItem(
            id=qid,
            question=question,
            answers=(self.answer(asked, key),),
            source="synthetic",
            supporting_titles=tuple(d.title for d in docs),
            supporting_doc_ids=tuple(d.id for d in docs),
            context=docs,
            hops=len(support),
        )

    def questions(
        self, hops: Iterable[int] = (1, 2), limit: int | None = None, seed: int = 0
    ) -> list[QAItem]:
        """Questions in a seeded random order; `limit` materialises only the first ones."""
        cands = self.candidates(hops)
        random.Random(seed).shuffle(cands)
        if limit is not None:
            cands = cands[:limit]
        return [self.make_question(*c) for c in cands]


class _Namer:
    """Unique capitalised syllable words; each is used by at most one entity."""

    def __init__(self, rng: random.Random, reserved: frozenset[str]) -> None:
        self.rng = rng
        self.reserved = reserved
        self.used: set[str] = set()

    def word(self, min_syl: int = 2, max_syl: int = 3) -> str:
        rng = self.rng
        while True:
            n = rng.randint(min_syl, max_syl)
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)) + rng.choice(_CODAS)
            if len(w) >= 4 and w not in self.used and w not in self.reserved:
                self.used.add(w)
                return w.capitalize()


def build_world(cfg: WorldConfig) -> World:
    """Build the world for `cfg`; deterministic in cfg.seed, linear in the number of entities."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS  # heavy import (scipy), only when building

    rng = random.Random(cfg.seed)
    namer = _Namer(rng, _TEMPLATE_WORDS | frozenset(STOPWORDS_EN_PLUS))
    first_names = [namer.word(2, 2) for _ in range(max(20, min(400, cfg.n_people // 10)))]
    total = cfg.n_people + cfg.n_films + cfg.n_cities + cfg.n_companies
    bar = tqdm(total=total, desc="world", unit="entity", disable=total < 50_000)

    cities = [f"city-{i}" for i in range(cfg.n_cities)]
    companies = [f"company-{i}" for i in range(cfg.n_companies)]
    people = [f"person-{i}" for i in range(cfg.n_people)]
    entities: dict[str, Entity] = {}
    for cid in cities:
        entities[cid] = Entity(cid, "city", namer.word(), rng.randrange(2_000, 2_000_000))
        bar.update()
    for pid in people:
        name = f"{rng.choice(first_names)} {namer.word()}"
        links = {"born_in": rng.choice(cities), "works_for": rng.choice(companies)}
        entities[pid] = Entity(pid, "person", name, rng.randint(1900, 2005), links)
        bar.update()
    for oid in companies:
        name = f"{namer.word()} {rng.choice(_COMPANY_SUFFIXES)}"
        links = {"founded_by": rng.choice(people), "headquartered_in": rng.choice(cities)}
        entities[oid] = Entity(oid, "company", name, rng.randint(1850, 2020), links)
        bar.update()
    for i in range(cfg.n_films):
        fid = f"film-{i}"
        name = f"{namer.word()} {rng.choice(_FILM_NOUNS)}"
        links = {"directed_by": rng.choice(people), "produced_by": rng.choice(companies)}
        entities[fid] = Entity(fid, "film", name, rng.randint(1930, 2024), links)
        bar.update()
    bar.close()

    documents = [Document(e.id, e.name, _describe(e, entities)) for e in entities.values()]
    return World(config=cfg, entities=entities, documents=documents)


def _describe(e: Entity, entities: dict[str, Entity]) -> str:
    """One short document in natural sentences stating the entity's own facts."""
    name = {rel: entities[t].name for rel, t in e.links.items()}
    if e.kind == "person":
        return f"{e.name} was born in {name['born_in']} in {e.value}. {e.name} works for {name['works_for']}."
    if e.kind == "film":
        return (
            f"{e.name} is a film released in {e.value}. It was directed by {name['directed_by']} "
            f"and produced by {name['produced_by']}."
        )
    if e.kind == "company":
        return (
            f"{e.name} is a company founded in {e.value} by {name['founded_by']}. "
            f"{e.name} is headquartered in {name['headquartered_in']}."
        )
    return f"{e.name} is a city with a population of {e.value}."
