"""The random floor of the shop domain: a uniformly random valid action on the page in view.

A trained model must beat this, not only an untrained one (which never writes a valid action):
WebShop's reward gives partial credit for any product of roughly the right kind, so random
clicking after a good search already scores. It searches with one of the task's instructions
verbatim, which a model has to learn to do.
"""

from __future__ import annotations

import random
import re
from typing import Any

from mem1_core.agent.types import PolicyInput, PolicyOutput

_RESULT_ID = re.compile(r"^\[([^\]\s]+)\] ", re.M)
_PAGE = re.compile(r"<info>(.*?)</info>", re.S)


class RandomShopPolicy:
    """Samples one valid action per turn (seeded); its state is a fixed placeholder."""

    def __init__(self, tokenizer: Any, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def action(self, page: str, instructions: list[str]) -> str:
        """A random action valid on `page` (the last <info> text; empty on the search page). On a results
        page it clicks one of the listed products (it never pages on); on a product page an option,
        buy now, prev or back to search."""
        if page.startswith("Results for"):
            choices = _RESULT_ID.findall(page)
        elif page.startswith("Item ["):
            choices = ["buy now", "< prev", "back to search"]
            for line in page.splitlines()[1:]:
                if ": " in line and not line.startswith(("Features:", "Selected:", "Actions:")):
                    choices += line.split(": ", 1)[1].split(" | ")
        else:
            return f"search[{self.rng.choice(instructions)}]"
        return f"click[{self.rng.choice(choices)}]"

    def generate(self, batch: list[PolicyInput], stop: list[str], max_new_tokens: int) -> list[PolicyOutput]:
        out = []
        for item in batch:
            pages = _PAGE.findall(self.decode(item.context_ids))
            page = pages[-1].strip() if pages else ""
            text = f"<IS>random</IS><action>{self.action(page, item.task.questions)}</action>"
            out.append(PolicyOutput(self.encode(text), text))
        return out
