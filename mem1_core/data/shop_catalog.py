"""The shopping domain's data: products, purchase goals, and the tasks built from them.

Two sources give the same records: a seeded synthetic catalogue (the embedded default and the test
data; same seed, same catalogue) and a loader for real WebShop files (products as a json list or
jsonl, in WebShop's layout or wrapped as {"id","contents","product"}; goals as a list/jsonl of
records or a dict keyed by ASIN). Malformed input raises `ShopDataError` naming file, row and field.

A shop task is a `data.types.Task` with domain="shop": one objective per instruction (gold answer =
the target ASIN) and the full goals, JSON-safe, under `task.extra["goals"]`.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mem1_core.data.types import Document, Objective, Task

log = logging.getLogger(__name__)

SHOP_DOMAIN = "shop"
PRICE_STEP = 10.0  # price bounds are round multiples of this, as in WebShop's goal generator
NO_PRICE_BOUND = 1_000_000.0


class ShopDataError(ValueError):
    """A product or goal file (or task) that cannot be used; the message names file, row and field."""


def normalize_text(s: str) -> str:
    """Lower-case, punctuation to spaces, single spaces: the form every match in this domain uses."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", s.lower()).split())


def price_bound(price: float, rng: random.Random | None = None) -> float:
    """A round budget above `price`: the next multiple of 10, or (with rng) one of the next two."""
    steps = int(price // PRICE_STEP) + 1
    if rng is not None:
        steps += rng.randint(0, 1)
    return steps * PRICE_STEP


@dataclass(frozen=True)
class Product:
    """One product as the environment shows and scores it.

    `query` is the product type (WebShop: the search query the product was scraped under);
    `product_category` the breadcrumb 'A › B › C'; `options` maps an option name (color, size) to
    its values; `price` is the price charged (WebShop ranges: the lowest price).
    """

    asin: str
    title: str
    category: str
    query: str
    product_category: str
    attributes: tuple[str, ...]
    options: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    price: float = 0.0
    description: str = ""
    bullet_points: tuple[str, ...] = ()

    def document(self) -> Document:
        """The searchable text of the product: title, attributes, features, description."""
        parts = [", ".join(self.attributes), "; ".join(self.bullet_points), self.description, self.query]
        return Document(id=self.asin, title=self.title, text=" ".join(p for p in parts if p))

    def to_record(self) -> dict[str, Any]:
        """WebShop-layout record (what `load_products` reads back)."""
        return {
            "asin": self.asin,
            "name": self.title,
            "category": self.category,
            "query": self.query,
            "product_category": self.product_category,
            "Attributes": list(self.attributes),
            "options": {k: list(v) for k, v in self.options.items()},
            "pricing": [self.price],
            "Description": self.description,
            "BulletPoints": list(self.bullet_points),
        }


@dataclass(frozen=True)
class ShopGoal:
    """One purchase instruction and what WebShop's reward checks against it."""

    asin: str
    instruction: str
    attributes: tuple[str, ...]
    options: tuple[str, ...]
    price_upper: float
    query: str
    category: str
    product_category: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "asin": self.asin,
            "instruction": self.instruction,
            "attributes": list(self.attributes),
            "options": list(self.options),
            "price_upper": self.price_upper,
            "query": self.query,
            "category": self.category,
            "product_category": self.product_category,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "<goal>") -> ShopGoal:
        try:
            return cls(
                asin=str(d["asin"]),
                instruction=str(d["instruction"]),
                attributes=tuple(str(a) for a in d.get("attributes", ())),
                options=tuple(str(o) for o in d.get("options", ())),
                price_upper=float(d.get("price_upper", NO_PRICE_BOUND)),
                query=str(d.get("query", "")),
                category=str(d.get("category", "")),
                product_category=str(d.get("product_category", "")),
                name=str(d.get("name", "")),
            )
        except KeyError as e:
            raise ShopDataError(f"{where}: goal is missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ShopDataError(f"{where}: goal has a bad field: {e}") from None


class Catalog:
    """The products of one shop, indexed by ASIN, searched through the backend it is given.

    `backend` is any retrieval SearchBackend over `documents()` (in-process BM25, a RetrievalClient);
    data knows no retriever, so whoever searches gives one (`use_backend`; the shop environment
    builds BM25 over the products when none was given).
    """

    def __init__(self, products: Sequence[Product], source: str = "synthetic", backend: Any = None):
        self.products = list(products)
        self.source = source
        self.by_asin: dict[str, Product] = {}
        for p in self.products:
            if p.asin in self.by_asin:
                raise ShopDataError(f"catalogue {source}: duplicate asin {p.asin!r}")
            self.by_asin[p.asin] = p
        self._backend = backend

    def __len__(self) -> int:
        return len(self.products)

    def documents(self) -> list[Document]:
        return [p.document() for p in self.products]

    @property
    def backend(self) -> Any:
        """The search backend, None until one is given."""
        return self._backend

    def use_backend(self, backend: Any) -> Catalog:
        """Search with `backend` from now on (e.g. a RetrievalClient instead of in-process BM25)."""
        self._backend = backend
        return self

    def search(self, query: str, topk: int) -> list[Product]:
        if self._backend is None:
            raise ValueError(f"catalogue {self.source}: no search backend; give one with use_backend")
        hits = self._backend.search([query], topk)[0]
        return [self.by_asin[h.document.id] for h in hits if h.document.id in self.by_asin]

    def save(self, path: Path) -> None:
        """Write products as WebShop-layout jsonl."""
        with Path(path).open("w", encoding="utf-8") as f:
            for p in self.products:
                f.write(json.dumps(p.to_record(), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------------
# Seeded synthetic catalogue


@dataclass(frozen=True)
class _Kind:
    name: str
    category: str
    breadcrumb: str
    groups: tuple[tuple[str, ...], ...]  # attribute groups: one value of each per product
    options: tuple[tuple[str, tuple[str, ...]], ...]
    price: tuple[float, float]


_COLORS = ("black", "white", "red", "navy blue", "grey", "green", "pink", "beige", "yellow", "purple")
_SIZES = ("x-small", "small", "medium", "large", "x-large")
_KINDS: tuple[_Kind, ...] = (
    _Kind(
        "t-shirt", "fashion", "Clothing › Men › Shirts › T-Shirts",
        (("cotton", "polyester", "linen", "bamboo"), ("slim fit", "relaxed fit", "regular fit"),
         ("crew neck", "v-neck", "short sleeve", "long sleeve")),
        (("color", _COLORS), ("size", _SIZES)), (6, 40),
    ),
    _Kind(
        "hoodie", "fashion", "Clothing › Women › Sweatshirts › Hoodies",
        (("fleece", "cotton", "polyester"), ("oversized", "slim fit", "regular fit"),
         ("zip up", "pullover", "drawstring hood")),
        (("color", _COLORS), ("size", _SIZES)), (18, 70),
    ),
    _Kind(
        "jeans", "fashion", "Clothing › Men › Jeans",
        (("stretch denim", "raw denim", "cotton"), ("skinny fit", "straight leg", "bootcut"),
         ("high waist", "mid rise", "button fly")),
        (("color", ("light wash", "dark wash", "black", "grey")),
         ("size", ("28w", "30w", "32w", "34w", "36w"))),
        (20, 90),
    ),
    _Kind(
        "sneakers", "fashion", "Shoes › Men › Fashion Sneakers",
        (("leather", "canvas", "mesh"), ("non slip", "lightweight", "memory foam"), ("lace up", "slip on")),
        (("color", _COLORS), ("size", ("7", "8", "9", "10", "11", "12"))), (25, 120),
    ),
    _Kind(
        "backpack", "luggage", "Luggage › Backpacks › Laptop Backpacks",
        (("nylon", "canvas", "leather"), ("water resistant", "anti theft", "lightweight"),
         ("laptop sleeve", "usb charging port", "bottle pocket")),
        (("color", _COLORS),), (15, 80),
    ),
    _Kind(
        "coffee mug", "garden", "Home & Kitchen › Kitchen & Dining › Mugs",
        (("ceramic", "stainless steel", "glass"), ("dishwasher safe", "microwave safe", "insulated"),
         ("with lid", "with handle", "double wall")),
        (("color", _COLORS), ("size", ("12 oz", "16 oz", "20 oz"))), (6, 35),
    ),
    _Kind(
        "desk lamp", "garden", "Home & Kitchen › Lighting › Desk Lamps",
        (("metal", "wood", "plastic"), ("dimmable", "touch control", "usb charging"),
         ("led", "adjustable arm", "clamp mount")),
        (("color", ("black", "white", "silver", "gold")),), (12, 60),
    ),
    _Kind(
        "headphones", "electronics", "Electronics › Headphones › Over-Ear Headphones",
        (("wireless", "wired", "bluetooth"), ("noise cancelling", "foldable", "lightweight"),
         ("built in microphone", "long battery life", "hi fi sound")),
        (("color", ("black", "white", "navy blue", "pink", "silver")),), (20, 150),
    ),
    _Kind(
        "shampoo", "beauty", "Beauty › Hair Care › Shampoo",
        (("sulfate free", "paraben free", "cruelty free"), ("argan oil", "coconut oil", "tea tree"),
         ("dry hair", "damaged hair", "oily hair")),
        (("size", ("8 fl oz", "16 fl oz", "32 fl oz")),), (5, 30),
    ),
    _Kind(
        "yoga mat", "sports", "Sports › Exercise & Fitness › Yoga Mats",
        (("tpe", "natural rubber", "pvc"), ("non slip", "extra thick", "eco friendly"),
         ("carrying strap", "alignment lines", "reversible")),
        (("color", _COLORS), ("size", ("4 mm", "6 mm", "8 mm"))), (15, 70),
    ),
    _Kind(
        "water bottle", "sports", "Sports › Outdoor Recreation › Water Bottles",
        (("stainless steel", "glass", "tritan plastic"), ("bpa free", "leak proof", "insulated"),
         ("straw lid", "wide mouth", "time marker")),
        (("color", _COLORS), ("size", ("500 ml", "750 ml", "1 liter"))), (8, 45),
    ),
    _Kind(
        "phone case", "electronics", "Electronics › Cell Phone Accessories › Cases",
        (("silicone", "leather", "clear plastic"), ("shockproof", "slim", "wallet"),
         ("kickstand", "card holder", "magsafe compatible")),
        (("color", _COLORS), ("model", ("iphone 13", "iphone 14", "galaxy s22", "pixel 7"))), (6, 40),
    ),
)  # fmt: skip

_SYLLABLES = ("nor", "vik", "zel", "ta", "mo", "ran", "ku", "bel", "sa", "lin", "dor", "fe", "qui", "pax")


def _brand(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _title_case(s: str) -> str:
    return " ".join(w if any(c.isdigit() for c in w) else w.capitalize() for w in s.split())


def build_catalog(seed: int = 0, n_products: int = 200) -> Catalog:
    """A seeded synthetic catalogue: every kind gets ~n_products/len(kinds) products with unique titles."""
    if n_products < len(_KINDS):
        raise ValueError(f"n_products={n_products}: need at least {len(_KINDS)} (one per product kind)")
    rng = random.Random(seed)
    products: list[Product] = []
    titles: set[str] = set()
    for i in range(n_products):
        kind = _KINDS[i % len(_KINDS)]
        while True:
            attrs = tuple(rng.choice(g) for g in kind.groups)
            brand = _brand(rng)
            title = f"{brand} {_title_case(attrs[1])} {_title_case(attrs[0])} {_title_case(kind.name)}"
            title += f" with {_title_case(attrs[2])}"
            if title not in titles:
                titles.add(title)
                break
        options = {}
        for name, values in kind.options:
            k = rng.randint(min(2, len(values)), min(5, len(values)))
            chosen = set(rng.sample(values, k))
            options[name] = tuple(v for v in values if v in chosen)  # catalogue order
        lo, hi = kind.price
        price = round(rng.uniform(lo, hi), 2)
        description = f"A {attrs[0]} {kind.name} by {brand}: {attrs[1]}, {attrs[2]}."
        products.append(
            Product(
                asin=f"S{seed % 100:02d}{i:05d}",
                title=title,
                category=kind.category,
                query=kind.name,
                product_category=kind.breadcrumb,
                attributes=attrs,
                options=options,
                price=price,
                description=description,
                bullet_points=tuple(_title_case(a) for a in attrs),
            )
        )
    return Catalog(products, source=f"synthetic:seed={seed}")


def _option_phrase(name: str, value: str) -> str:
    if name == "color":
        return f"in {value}"
    return f"{name} {value}"


def make_goal(product: Product, rng: random.Random) -> ShopGoal:
    """A WebShop-style instruction for `product`: 2 of its attributes, one value per option, a budget."""
    attrs = tuple(
        sorted(rng.sample(product.attributes, min(2, len(product.attributes))), key=product.attributes.index)
    )
    chosen = [(name, rng.choice(values)) for name, values in product.options.items() if values]
    price_upper = price_bound(product.price, rng)
    phrases = [_option_phrase(n, v) for n, v in chosen]
    text = f"find a {' '.join(attrs)} {product.query}"
    if phrases:
        text += " " + ", ".join(phrases)
    text += f", price lower than {price_upper:.2f} dollars"
    return ShopGoal(
        asin=product.asin,
        instruction=text,
        attributes=attrs,
        options=tuple(v for _, v in chosen),
        price_upper=price_upper,
        query=product.query,
        category=product.category,
        product_category=product.product_category,
        name=product.title,
    )


def make_goals(catalog: Catalog, n: int, seed: int = 0, asins: Sequence[str] | None = None) -> list[ShopGoal]:
    """`n` seeded goals over `asins` (default: every product), cycling through them in a shuffled order."""
    rng = random.Random(seed)
    pool = list(asins) if asins is not None else [p.asin for p in catalog.products]
    if not pool:
        raise ValueError("make_goals: no products to build goals for")
    order: list[str] = []
    goals = []
    for _ in range(n):
        if not order:
            order = pool[:]
            rng.shuffle(order)
        goals.append(make_goal(catalog.by_asin[order.pop()], rng))
    return goals


def split_asins(catalog: Catalog, eval_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint (train, eval) target products, so eval instructions ask for products never trained on."""
    asins = [p.asin for p in catalog.products]
    random.Random(seed).shuffle(asins)
    n_eval = max(1, round(len(asins) * eval_fraction))
    return sorted(asins[n_eval:]), sorted(asins[:n_eval])


# ---------------------------------------------------------------------------------------------------
# Tasks


def shop_task(task_id: str, goals: Sequence[ShopGoal], source: str = "synthetic-shop") -> Task:
    """A Task with one objective per instruction, in purchase order."""
    if not goals:
        raise ValueError(f"shop task {task_id}: needs at least one goal")
    objectives = tuple(
        Objective(question=g.instruction, answers=(g.asin,), item_id=g.asin, source=source) for g in goals
    )
    return Task(
        id=task_id, objectives=objectives, domain=SHOP_DOMAIN, extra={"goals": [g.to_dict() for g in goals]}
    )


def make_shop_tasks(
    goals: Sequence[ShopGoal], n_objectives: int, n_tasks: int, seed: int = 0, prefix: str = "shop"
) -> list[Task]:
    """`n_tasks` tasks of `n_objectives` distinct goals each, drawn by seed from `goals`."""
    if n_objectives > len(goals):
        raise ValueError(f"{n_objectives} objectives per task but only {len(goals)} goals")
    rng = random.Random(seed)
    tasks = []
    for i in range(n_tasks):
        chosen = rng.sample(list(goals), n_objectives)
        tasks.append(shop_task(f"{prefix}-{n_objectives}-{i:05d}", chosen))
    return tasks


def split_goals(
    goals: Sequence[ShopGoal], eval_fraction: float = 0.2, seed: int = 0
) -> tuple[list[ShopGoal], list[ShopGoal]]:
    """Disjoint (train, eval) goals by target product: no eval target is ever bought in training."""
    asins = sorted({g.asin for g in goals})
    random.Random(seed).shuffle(asins)
    n_eval = max(1, round(len(asins) * eval_fraction))
    held_out = set(asins[:n_eval])
    return [g for g in goals if g.asin not in held_out], [g for g in goals if g.asin in held_out]


def compose_shop_tasks(
    train_goals: Sequence[ShopGoal],
    eval_goals: Sequence[ShopGoal],
    train_objectives: Sequence[int],
    eval_objectives: Sequence[int],
    n_train_tasks: int,
    n_eval_tasks: int,
    seed: int = 0,
) -> tuple[list[Task], list[Task]]:
    """(train, eval) shop tasks named like compose's QA tasks: train tasks cycle through
    `train_objectives`; eval has `n_eval_tasks` per entry of `eval_objectives`."""
    for name, pool, counts in (
        ("train", train_goals, train_objectives),
        ("eval", eval_goals, eval_objectives),
    ):
        if counts and max(counts) > len(pool):
            raise ValueError(f"{name}: {max(counts)} instructions per task but only {len(pool)} goals")
    rng = random.Random(seed + 1)
    train = [
        shop_task(f"train-{i:06d}-n{n}", rng.sample(list(train_goals), n))
        for i, n in ((i, train_objectives[i % len(train_objectives)]) for i in range(n_train_tasks))
    ]
    evals = [
        shop_task(f"eval-n{n:02d}-{i:04d}", rng.sample(list(eval_goals), n))
        for n in eval_objectives
        for i in range(n_eval_tasks)
    ]
    return train, evals


def goals_from_task(task: Task) -> list[ShopGoal]:
    """The goals stored in a shop task, validated (errors name the task and goal index)."""
    if task.domain != SHOP_DOMAIN:
        raise ShopDataError(f"task {task.id}: domain is {task.domain!r}, not {SHOP_DOMAIN!r}")
    raw = task.extra.get("goals")
    if not isinstance(raw, list) or len(raw) != task.n_objectives:
        raise ShopDataError(
            f"task {task.id}: extra['goals'] must be a list with one goal per objective ({task.n_objectives})"
        )
    return [ShopGoal.from_dict(g, where=f"task {task.id} goal {i}") for i, g in enumerate(raw)]


# ---------------------------------------------------------------------------------------------------
# Real WebShop files


def _read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(row, record) from a json list / dict or jsonl file; row = 1-based line (jsonl) or index (json)."""
    path = Path(path)
    if not path.is_file():
        raise ShopDataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and path.suffix == ".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ShopDataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
        if isinstance(data, list):
            yield from enumerate(data)
        else:
            yield from ((i, (k, v)) for i, (k, v) in enumerate(data.items()))
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise ShopDataError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None


def _str_list(value: Any, where: str, fieldname: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ShopDataError(
            f"{where}: field {fieldname!r} must be a list of strings, got {type(value).__name__}"
        )
    return tuple(value)


def _parse_price(rec: dict[str, Any], where: str) -> float:
    """WebShop 'pricing' list (lowest wins), else 'Price' text ('$19.99 to $27.99'), else 'price'."""
    pricing = rec.get("pricing")
    if isinstance(pricing, list) and pricing:
        try:
            return float(min(float(p) for p in pricing))
        except (TypeError, ValueError):
            raise ShopDataError(f"{where}: field 'pricing' must hold numbers, got {pricing!r}") from None
    for key in ("Price", "price"):
        value = rec.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str) and value.strip():
            found = re.findall(r"\d+(?:\.\d+)?", value.replace(",", ""))
            if not found:
                raise ShopDataError(f"{where}: field {key!r} has no number: {value!r}")
            return min(float(x) for x in found)
    raise ShopDataError(f"{where}: no price (fields 'pricing', 'Price' or 'price')")


def _parse_options(rec: dict[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    """'options' {name: [values]} (WebShop's cleaned form) or 'customization_options' {Name: [{value}]}."""
    opts = rec.get("options")
    if isinstance(opts, dict) and opts:
        out: dict[str, tuple[str, ...]] = {}
        for name, values in opts.items():
            out[str(name).lower()] = _str_list(values, where, f"options.{name}")
        return out
    if opts not in (None, "", {}) and not isinstance(opts, dict):
        raise ShopDataError(f"{where}: field 'options' must be a mapping, got {type(opts).__name__}")
    custom = rec.get("customization_options")
    if custom in (None, "", {}):
        return {}
    if not isinstance(custom, dict):
        raise ShopDataError(
            f"{where}: field 'customization_options' must be a mapping, got {type(custom).__name__}"
        )
    out = {}
    for name, entries in custom.items():
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ShopDataError(f"{where}: field 'customization_options.{name}' must be a list")
        values = []
        for j, e in enumerate(entries):
            value = e.get("value") if isinstance(e, dict) else e
            if not isinstance(value, str):
                raise ShopDataError(f"{where}: field 'customization_options.{name}[{j}].value' must be text")
            values.append(value.strip().lower())
        out[str(name).lower()] = tuple(values)
    return out


def parse_product(rec: Any, where: str) -> Product:
    """One WebShop product record (optionally wrapped as {"id","contents","product"}) -> Product."""
    if isinstance(rec, dict) and isinstance(rec.get("product"), dict):
        rec = rec["product"]
    if not isinstance(rec, dict):
        raise ShopDataError(f"{where}: a product must be a JSON object, got {type(rec).__name__}")
    asin = rec.get("asin")
    if not isinstance(asin, str) or not asin.strip():
        raise ShopDataError(f"{where}: field 'asin' is missing or not text")
    title = rec.get("name") or rec.get("Title")
    if not isinstance(title, str) or not title.strip():
        raise ShopDataError(f"{where}: field 'name' (or 'Title') is missing or not text")
    attributes = _str_list(rec.get("Attributes", rec.get("attributes")), where, "Attributes")
    description = rec.get("Description") or rec.get("full_description") or ""
    if not isinstance(description, str):
        raise ShopDataError(f"{where}: field 'Description' must be text")
    bullets = _str_list(rec.get("BulletPoints", rec.get("small_description")), where, "BulletPoints")
    return Product(
        asin=asin.strip(),
        title=" ".join(title.split()),
        category=str(rec.get("category") or ""),
        query=str(rec.get("query") or ""),
        product_category=str(rec.get("product_category") or ""),
        attributes=tuple(a.strip().lower() for a in attributes if a.strip()),
        options=_parse_options(rec, where),
        price=_parse_price(rec, where),
        description=" ".join(description.split()),
        bullet_points=tuple(" ".join(b.split()) for b in bullets if b.strip()),
    )


def load_products(path: Path, limit: int | None = None) -> list[Product]:
    """Products from a WebShop products file (json list or jsonl)."""
    path = Path(path)
    products = []
    for row, rec in _read_records(path):
        if isinstance(rec, tuple):
            raise ShopDataError(f"{path}: a products file must be a list or jsonl, not a mapping")
        products.append(parse_product(rec, f"{path}:{row}" if path.suffix == ".jsonl" else f"{path}[{row}]"))
        if limit is not None and len(products) >= limit:
            break
    return products


def load_catalog(path: Path, limit: int | None = None) -> Catalog:
    return Catalog(load_products(path, limit), source=str(path))


def _goal_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record with 'asin') for every goal, whatever the file's layout."""
    for row, rec in _read_records(path):
        where = f"{path}:{row}" if path.suffix == ".jsonl" else f"{path}[{row}]"
        if isinstance(rec, tuple):  # {asin: {...}} or {asin: [{...}, ...]}
            asin, value = rec
            where = f"{path}[{asin!r}]"
            items = value if isinstance(value, list) else [value]
            for j, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ShopDataError(f"{where}[{j}]: a goal must be a JSON object")
                yield (f"{where}[{j}]" if isinstance(value, list) else where), {"asin": asin, **item}
        elif isinstance(rec, dict):
            yield where, rec
        else:
            raise ShopDataError(f"{where}: a goal must be a JSON object, got {type(rec).__name__}")


def parse_goal(rec: dict[str, Any], product: Product, where: str) -> ShopGoal:
    """A WebShop goal record (instruction / instruction_text, instruction_attributes, instruction_options,
    optional price_upper) for `product` -> ShopGoal. Without price_upper the budget is the next round
    10 above the product's price, appended to the instruction as WebShop does."""
    text = rec.get("instruction", rec.get("instruction_text"))
    if not isinstance(text, str) or not text.strip():
        raise ShopDataError(f"{where}: field 'instruction' is missing or not text")
    attrs = _str_list(
        rec.get("instruction_attributes", rec.get("attributes")), where, "instruction_attributes"
    )
    raw_opts = rec.get("instruction_options", rec.get("goal_options"))
    if isinstance(raw_opts, dict):
        options = tuple(str(v) for v in raw_opts.values())
    else:
        options = _str_list(raw_opts, where, "instruction_options")
    text = " ".join(text.split())
    if "price_upper" in rec:
        try:
            price_upper = float(rec["price_upper"])
        except (TypeError, ValueError):
            raise ShopDataError(f"{where}: field 'price_upper' must be a number") from None
    else:
        price_upper = price_bound(product.price)
        if "price lower than" not in text.lower():
            text += f", and price lower than {price_upper:.2f} dollars"
    return ShopGoal(
        asin=product.asin,
        instruction=text,
        attributes=tuple(a.strip().lower() for a in attrs),
        options=tuple(o.strip().lower() for o in options),
        price_upper=price_upper,
        query=str(rec.get("query") or product.query),
        category=str(rec.get("category") or product.category),
        product_category=product.product_category,
        name=product.title,
    )


def load_goals(path: Path, catalog: Catalog) -> list[ShopGoal]:
    """Goals from a WebShop goals/instructions file; records without an instruction (attribute-only
    entries of items_ins files) and goals for products not in `catalog` are skipped and counted."""
    path = Path(path)
    goals: list[ShopGoal] = []
    no_text = unknown = 0
    for where, rec in _goal_records(path):
        asin = rec.get("asin")
        if not isinstance(asin, str) or not asin:
            raise ShopDataError(f"{where}: field 'asin' is missing or not text")
        if rec.get("instruction", rec.get("instruction_text")) is None:
            no_text += 1
            continue
        product = catalog.by_asin.get(asin)
        if product is None:
            unknown += 1
            continue
        goals.append(parse_goal(rec, product, where))
    if no_text or unknown:
        log.info(
            "%s: %d goals kept, %d without instruction, %d for unknown products",
            path,
            len(goals),
            no_text,
            unknown,
        )
    return goals
