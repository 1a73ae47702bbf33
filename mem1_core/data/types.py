"""Records that flow from the data sources through composition into environments."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """One retrievable passage; `contents` follows the retrieval API's '"Title"\\ntext' layout."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        return f'"{self.title}"\n{self.text}'

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "contents": self.contents}


@dataclass(frozen=True)
class QAItem:
    """One single-objective question from any source, in one shape."""

    id: str
    question: str
    answers: tuple[str, ...]
    source: str
    supporting_titles: tuple[str, ...] = ()
    supporting_doc_ids: tuple[str, ...] = ()
    context: tuple[Document, ...] = ()
    hops: int = 1


@dataclass(frozen=True)
class Objective:
    """One sub-question of a composed task, with what an oracle needs to solve it."""

    question: str
    answers: tuple[str, ...]
    supporting_doc_ids: tuple[str, ...] = ()
    supporting_titles: tuple[str, ...] = ()
    item_id: str = ""
    source: str = ""
    hops: int = 1


@dataclass(frozen=True)
class Task:
    """A composed N-objective task: N questions asked in one prompt, answered together."""

    id: str
    objectives: tuple[Objective, ...]
    domain: str = "qa"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    @property
    def questions(self) -> list[str]:
        return [o.question for o in self.objectives]

    @property
    def gold_answers(self) -> list[tuple[str, ...]]:
        return [o.answers for o in self.objectives]

    def to_row(self) -> dict[str, Any]:
        """Flat row for a datasets.Dataset / parquet."""
        return {
            "id": self.id,
            "domain": self.domain,
            "n_objectives": self.n_objectives,
            "objectives": [
                {
                    **asdict(o),
                    "answers": list(o.answers),
                    "supporting_doc_ids": list(o.supporting_doc_ids),
                    "supporting_titles": list(o.supporting_titles),
                }
                for o in self.objectives
            ],
            "extra": json.dumps(self.extra, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Task:
        objectives = tuple(
            Objective(
                question=o["question"],
                answers=tuple(o["answers"]),
                supporting_doc_ids=tuple(o.get("supporting_doc_ids") or ()),
                supporting_titles=tuple(o.get("supporting_titles") or ()),
                item_id=o.get("item_id", ""),
                source=o.get("source", ""),
                hops=int(o.get("hops", 1)),
            )
            for o in row["objectives"]
        )
        return cls(
            id=row["id"],
            objectives=objectives,
            domain=row.get("domain", "qa"),
            extra=json.loads(row.get("extra") or "{}"),
        )
