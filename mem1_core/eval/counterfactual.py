"""Counterfactual documents: does a model read its observations, or recite what it memorised?

The tiny models are pre-trained on the very corpus they later search, so a right answer could come
from the weights instead of the retrieved document. Redrawing every fact of the synthetic world (names
kept; links and numbers drawn again) and rewriting its documents separates the two on the same
questions: a reader's answers follow the new documents, a reciter's stay the old world's.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TypeVar

# _describe renders a document from an entity's facts; reused so the redrawn world reads exactly like the
# original (world.py also keys the learning bench's SFT cache, so it is not edited for a public name).
from mem1_core.data.types import Document, Objective, Task
from mem1_core.data.world import World, _describe
from mem1_core.protocol.scoring import exact_match

T = TypeVar("T")


def redraw_facts(world: World, seed: int) -> World:
    """The same entities and names, each link and number drawn again (never the old one where the kind
    has another entity or value to give)."""
    rng = random.Random(seed)
    ids: dict[str, list[str]] = {}
    for e in world.entities.values():
        ids.setdefault(e.kind, []).append(e.id)
    values = {kind: sorted({world.entities[i].value for i in pool}) for kind, pool in ids.items()}
    id_pos = {kind: {x: i for i, x in enumerate(pool)} for kind, pool in ids.items()}
    value_pos = {kind: {v: i for i, v in enumerate(pool)} for kind, pool in values.items()}

    def other(old: T, pool: list[T], pos: dict[T, int]) -> T:
        """A uniform draw from `pool` without `old` (one random number, whatever the pool's size)."""
        if len(pool) < 2:
            return old
        j = rng.randrange(len(pool) - 1)
        return pool[j + 1] if j >= pos[old] else pool[j]

    entities = {}
    for e in world.entities.values():
        links = {}
        for rel, t in e.links.items():
            kind = world.entities[t].kind
            links[rel] = other(t, ids[kind], id_pos[kind])
        value = other(e.value, values[e.kind], value_pos[e.kind])
        entities[e.id] = replace(e, links=links, value=value)
    documents = [Document(e.id, e.name, _describe(e, entities)) for e in entities.values()]
    return World(config=world.config, entities=entities, documents=documents)


def question_key(item_id: str, world: World) -> tuple[str, str | None, str]:
    """(entity id, bridge relation or None, asked key) of a synthetic question id (World.make_question)."""
    prefix = f"world{world.config.seed}-"
    if not item_id.startswith(prefix):
        raise ValueError(f"{item_id!r} is not a question of synthetic world {world.config.seed}")
    entity_id, bridge, key = item_id[len(prefix) :].rsplit("-", 2)
    if entity_id not in world.entities:
        raise ValueError(f"{item_id!r}: world {world.config.seed} has no entity {entity_id!r}")
    return entity_id, None if bridge == "self" else bridge, key


def counterfactual_tasks(tasks: list[Task], world: World, redrawn: World) -> list[Task]:
    """The same tasks (ids, question texts) with gold answers and supporting documents from `redrawn`."""

    def swap(o: Objective) -> Objective:
        q = redrawn.make_question(*question_key(o.item_id, world))
        if q.question != o.question:  # names are kept, so the questions must be too
            raise ValueError(f"{o.item_id}: the redrawn world asks {q.question!r}, the task {o.question!r}")
        return replace(o, answers=q.answers, supporting_doc_ids=q.supporting_doc_ids,
                       supporting_titles=q.supporting_titles)  # fmt: skip

    return [replace(t, objectives=tuple(swap(o) for o in t.objectives)) for t in tasks]


def recited_share(tasks: list[Task], predictions: list[list[str]], world: World) -> float:
    """Share of sub-answers (over counterfactual `tasks`) that equal the ORIGINAL world's answer."""
    hits = total = 0
    for task, preds in zip(tasks, predictions, strict=True):
        for j, o in enumerate(task.objectives):
            e, bridge, key = question_key(o.item_id, world)
            old = world.make_question(e, bridge, key).answers
            total += 1
            hits += int(j < len(preds) and exact_match(preds[j], old) == 1.0)
    return hits / total if total else 0.0
