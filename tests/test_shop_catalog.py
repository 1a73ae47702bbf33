"""The shop catalogue: seeded synthetic products and goals, WebShop file loaders, shop tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mem1_core.data.shop_catalog import (
    SHOP_DOMAIN,
    Catalog,
    ShopDataError,
    ShopGoal,
    build_catalog,
    compose_shop_tasks,
    goals_from_task,
    load_catalog,
    load_goals,
    load_products,
    make_goals,
    make_shop_tasks,
    split_asins,
    split_goals,
)
from mem1_core.data.types import Task


def test_same_seed_same_catalogue_and_goals() -> None:
    a, b = build_catalog(seed=3, n_products=60), build_catalog(seed=3, n_products=60)
    assert [p.to_record() for p in a.products] == [p.to_record() for p in b.products]
    assert make_goals(a, 10, seed=1) == make_goals(b, 10, seed=1)
    c = build_catalog(seed=4, n_products=60)
    assert [p.title for p in a.products] != [p.title for p in c.products]


def test_synthetic_products_are_complete_and_titles_unique() -> None:
    cat = build_catalog(seed=0, n_products=120)
    assert len(cat) == 120
    assert len({p.title for p in cat.products}) == 120
    for p in cat.products:
        assert p.price > 0 and p.category and p.query and len(p.attributes) == 3
        assert p.options and all(values for values in p.options.values())
        assert " › " in p.product_category


def test_goals_describe_their_target_product() -> None:
    cat = build_catalog(seed=0, n_products=60)
    for goal in make_goals(cat, 30, seed=2):
        product = cat.by_asin[goal.asin]
        assert set(goal.attributes) <= set(product.attributes)
        assert all(any(o in vs for vs in product.options.values()) for o in goal.options)
        assert product.price <= goal.price_upper and goal.price_upper % 10 == 0
        assert goal.query in goal.instruction and f"{goal.price_upper:.2f} dollars" in goal.instruction
        assert ShopGoal.from_dict(json.loads(json.dumps(goal.to_dict()))) == goal


def test_shop_tasks_round_trip_through_a_dataset_row() -> None:
    cat = build_catalog(seed=0, n_products=60)
    train, held_out = split_asins(cat, eval_fraction=0.25, seed=0)
    assert not set(train) & set(held_out) and len(train) + len(held_out) == 60
    goals = make_goals(cat, 20, seed=0, asins=held_out)
    assert {g.asin for g in goals} <= set(held_out)
    tasks = make_shop_tasks(goals, n_objectives=3, n_tasks=4, seed=0)
    assert tasks == make_shop_tasks(goals, n_objectives=3, n_tasks=4, seed=0)
    for task in tasks:
        back = Task.from_row(json.loads(json.dumps(task.to_row())))
        assert back.domain == SHOP_DOMAIN and back.n_objectives == 3
        assert [g.asin for g in goals_from_task(back)] == [o.answers[0] for o in back.objectives]
        assert len({g.asin for g in goals_from_task(back)}) == 3


def test_goals_from_a_non_shop_or_broken_task_fail_clearly() -> None:
    cat = build_catalog(seed=0, n_products=24)
    task = make_shop_tasks(make_goals(cat, 4), 2, 1)[0]
    with pytest.raises(ShopDataError, match="domain is 'qa'"):
        goals_from_task(Task(task.id, task.objectives, domain="qa", extra=task.extra))
    with pytest.raises(ShopDataError, match="one goal per objective"):
        goals_from_task(
            Task(task.id, task.objectives, domain="shop", extra={"goals": task.extra["goals"][:1]})
        )
    broken = [dict(task.extra["goals"][0]), task.extra["goals"][1]]
    del broken[0]["instruction"]
    with pytest.raises(ShopDataError, match=r"goal 0: .*'instruction'"):
        goals_from_task(Task(task.id, task.objectives, domain="shop", extra={"goals": broken}))


def test_saved_catalogue_loads_back_through_the_webshop_loader(tmp_path: Path) -> None:
    cat = build_catalog(seed=5, n_products=30)
    cat.save(tmp_path / "products.jsonl")
    back = load_catalog(tmp_path / "products.jsonl")
    assert [p.to_record() for p in back.products] == [p.to_record() for p in cat.products]


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_loader_reads_both_webshop_layouts(tmp_path: Path) -> None:
    wrapped = {
        "id": "B1",
        "contents": "…",
        "product": {
            "asin": "B1",
            "Title": "Soft  Cotton Tee",
            "category": "fashion",
            "query": "t-shirts",
            "pricing": [19.99, 27.99],
            "customization_options": {
                "Color": [{"value": "Red", "price": 0}, {"value": "Blue"}],
                "Size": None,
            },
            "Attributes": ["Cotton", "machine wash"],
            "BulletPoints": ["100% cotton"],
        },
    }
    flat = {"asin": "B2", "name": "Mug", "Price": "$8.50", "options": {"Size": ["12 oz"]}, "attributes": []}
    products = load_products(_write_jsonl(tmp_path / "p.jsonl", [wrapped, flat]))
    assert products[0].title == "Soft Cotton Tee" and products[0].price == 19.99
    assert products[0].options == {"color": ("red", "blue")} and products[0].attributes == (
        "cotton",
        "machine wash",
    )
    assert products[1].price == 8.5 and products[1].options == {"size": ("12 oz",)}
    (tmp_path / "p.json").write_text(json.dumps([flat]), encoding="utf-8")
    assert load_products(tmp_path / "p.json")[0].asin == "B2"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"name": "x", "pricing": [1.0]}, r"p\.jsonl:2: field 'asin'"),
        ({"asin": "B9", "pricing": [1.0]}, r"p\.jsonl:2: field 'name'"),
        ({"asin": "B9", "name": "x"}, r"p\.jsonl:2: no price"),
        ({"asin": "B9", "name": "x", "pricing": ["cheap"]}, r"p\.jsonl:2: field 'pricing'"),
        ({"asin": "B9", "name": "x", "price": 1, "Attributes": "a"}, None),
        ({"asin": "B9", "name": "x", "price": 1, "Attributes": [1, 2]}, r"p\.jsonl:2: field 'Attributes'"),
        (
            {"asin": "B9", "name": "x", "price": 1, "customization_options": ["red"]},
            r"'customization_options'",
        ),
        (
            {"asin": "B9", "name": "x", "price": 1, "options": {"Color": [{"v": 1}]}},
            r"field 'options\.Color'",
        ),
        ("just text", r"p\.jsonl:2: a product must be a JSON object"),
    ],
)
def test_loader_names_file_row_and_field_on_bad_products(
    tmp_path: Path, row: object, message: str | None
) -> None:
    good = {"asin": "B1", "name": "ok", "price": 2.0}
    path = _write_jsonl(tmp_path / "p.jsonl", [good, row])
    if message is None:
        assert load_products(path)[1].attributes == ("a",)
        return
    with pytest.raises(ShopDataError, match=message):
        load_products(path)


def test_loader_reports_invalid_json_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"asin": "B1", "name": "ok", "price": 1}\n{"asin": \n', encoding="utf-8")
    with pytest.raises(ShopDataError, match=r"p\.jsonl:2: not valid JSON"):
        load_products(path)
    with pytest.raises(ShopDataError, match="file not found"):
        load_products(tmp_path / "missing.jsonl")


def test_goal_loader_layouts_and_errors(tmp_path: Path) -> None:
    cat = Catalog(
        load_products(_write_jsonl(tmp_path / "p.jsonl", [{"asin": "B1", "name": "Red Mug", "price": 12}]))
    )
    by_asin = tmp_path / "items_ins.json"
    by_asin.write_text(
        json.dumps(
            {
                "B1": {
                    "attributes": ["ceramic"],
                    "instruction": "find a ceramic mug",
                    "instruction_attributes": ["ceramic"],
                },
                "B2": {"attributes": ["glass"], "instruction": "find a glass", "instruction_attributes": []},
                "B3": {"attributes": ["no instruction here"]},
            }
        ),
        encoding="utf-8",
    )
    goals = load_goals(by_asin, cat)
    assert len(goals) == 1 and goals[0].attributes == ("ceramic",) and goals[0].price_upper == 20.0
    assert goals[0].instruction.endswith("price lower than 20.00 dollars")
    human = tmp_path / "human.json"
    human.write_text(
        json.dumps(
            {"B1": [{"instruction": "i want a red mug", "instruction_options": ["Red"], "price_upper": 50}]}
        ),
        encoding="utf-8",
    )
    (goal,) = load_goals(human, cat)
    assert goal.options == ("red",) and goal.price_upper == 50.0 and goal.instruction == "i want a red mug"
    bad = _write_jsonl(
        tmp_path / "g.jsonl", [{"asin": "B1", "instruction": "ok"}, {"asin": "B1", "instruction": 3}]
    )
    with pytest.raises(ShopDataError, match=r"g\.jsonl:2: field 'instruction'"):
        load_goals(bad, cat)
    bad = _write_jsonl(tmp_path / "g2.jsonl", [{"instruction": "no asin"}])
    with pytest.raises(ShopDataError, match=r"g2\.jsonl:1: field 'asin'"):
        load_goals(bad, cat)
    bad = _write_jsonl(tmp_path / "g3.jsonl", [{"asin": "B1", "instruction": "x", "price_upper": "lots"}])
    with pytest.raises(ShopDataError, match=r"g3\.jsonl:1: field 'price_upper'"):
        load_goals(bad, cat)


@pytest.mark.realdata
def test_real_webshop_files_load(shared_data: Path) -> None:
    webshop = shared_data / "webshop"
    cat = load_catalog(webshop / "products_100.jsonl")
    assert len(cat) == 100
    with_options = [p for p in cat.products if p.options]
    assert with_options and all(all(v for v in p.options.values()) for p in with_options)
    assert all(p.price > 0 and p.title for p in cat.products)
    goals = load_goals(webshop / "goals_for_products_100.jsonl", cat)
    assert len(goals) == 44
    for g in goals:
        product = cat.by_asin[g.asin]
        assert g.attributes and product.price <= g.price_upper
        assert g.query == product.query and g.name == product.title
    # the instructions file covers 1,000 ASINs; only those in the catalogue with an instruction are kept
    from_items = load_goals(webshop / "items_ins_v2_1000.json", cat)
    assert 0 < len(from_items) <= 100 and {g.asin for g in from_items} <= set(cat.by_asin)


def test_compose_shop_tasks_keeps_eval_targets_out_of_training() -> None:
    cat = build_catalog(seed=1, n_products=120)
    train_goals, eval_goals = split_goals(make_goals(cat, 120, seed=1), eval_fraction=0.25, seed=1)
    assert not {g.asin for g in train_goals} & {g.asin for g in eval_goals}
    train, evals = compose_shop_tasks(train_goals, eval_goals, [2], [1, 4, 16], 10, 3, seed=0)
    assert [t.n_objectives for t in train] == [2] * 10 and train[0].id == "train-000000-n2"
    assert [t.n_objectives for t in evals] == [1] * 3 + [4] * 3 + [16] * 3 and evals[-1].id == "eval-n16-0002"
    eval_asins = {g.asin for g in eval_goals}
    assert all(o.answers[0] not in eval_asins for t in train for o in t.objectives)
    assert all(o.answers[0] in eval_asins for t in evals for o in t.objectives)
    assert (train, evals) == compose_shop_tasks(train_goals, eval_goals, [2], [1, 4, 16], 10, 3, seed=0)
    with pytest.raises(ValueError, match="eval: 32 instructions per task but only"):
        compose_shop_tasks(train_goals, eval_goals[:5], [2], [32], 1, 1)
