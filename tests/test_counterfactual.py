"""Counterfactual documents tell a reader from a reciter: the oracle (which reads) follows the redrawn
facts; a policy that answers with the original world's facts scores 0 there and is counted as reciting."""

from __future__ import annotations

from pathlib import Path

import pytest

from mem1_core.config import AgentConfig, ComposeConfig, WorldConfig
from mem1_core.data import compose
from mem1_core.data.world import build_world
from mem1_core.envs.qa import tokenizer_texts
from mem1_core.eval.counterfactual import counterfactual_tasks, question_key, recited_share, redraw_facts
from mem1_core.eval.metrics import objective_scores
from mem1_core.models import train_tokenizer
from mem1_core.protocol.tags import DEFAULT_GRAMMAR as G
from mem1_core.rl import sft

WORLD = WorldConfig(n_people=40, n_films=12, n_cities=6, n_companies=6)


def test_redrawn_world_keeps_names_and_changes_every_fact() -> None:
    world = build_world(WORLD)
    redrawn = redraw_facts(world, seed=1)
    assert redraw_facts(world, seed=1).documents == redrawn.documents  # seeded
    for eid, e in world.entities.items():
        new = redrawn.entities[eid]
        assert (new.name, new.kind, set(new.links)) == (e.name, e.kind, set(e.links))
        assert all(new.links[r] != t for r, t in e.links.items()), eid
        assert new.value != e.value, eid
        text = redrawn.document(eid).text
        assert str(new.value) in text and str(e.value) not in text
        assert all(redrawn.entities[t].name in text for t in new.links.values())


def test_question_key_round_trips_and_rejects_other_ids() -> None:
    world = build_world(WORLD)
    for item in world.questions(hops=[1, 2], limit=50):
        assert world.make_question(*question_key(item.id, world)).id == item.id
    with pytest.raises(ValueError, match="not a question of synthetic world 0"):
        question_key("hotpotqa-5a8b57f25542995d1e6f1371", world)
    with pytest.raises(ValueError, match="has no entity 'person-999'"):
        question_key("world0-person-999-self-birth_year", world)


def test_the_oracle_reads_the_redrawn_documents_and_a_reciter_is_caught(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = ComposeConfig(world=WORLD, n_train_tasks=4, n_eval_tasks=4, eval_objectives=[1, 2], hops=[1, 2])
    compose.run(cfg, data)
    tasks = compose.load_tasks(data, "eval")
    world = build_world(WORLD)
    redrawn = redraw_facts(world, seed=1)
    cf = counterfactual_tasks(tasks, world, redrawn)
    assert [t.questions for t in cf] == [t.questions for t in tasks]
    assert all(
        a.answers != b.answers
        for t, u in zip(tasks, cf, strict=True)
        for a, b in zip(t.objectives, u.objectives, strict=True)
    )

    tok = train_tokenizer(tokenizer_texts(cf, redrawn.documents, G), 512, G)
    agent = AgentConfig(topk=1)
    trajs = sft.oracle_trajectories(cf, sft.make_env_factory(redrawn.documents, agent), tok, agent)
    for task, traj in zip(cf, trajs, strict=True):
        assert objective_scores(traj.predictions, [list(o.answers) for o in task.objectives])[0] == [
            1.0
        ] * len(task.objectives)
    assert recited_share(cf, [t.predictions for t in trajs], world) == 0.0
    old = [[o.answers[0] for o in t.objectives] for t in tasks]  # what a model that memorised would say
    assert recited_share(cf, old, world) == 1.0
    assert recited_share(cf, [p[:1] for p in old], world) == pytest.approx(
        len(cf) / sum(t.n_objectives for t in cf)
    )
