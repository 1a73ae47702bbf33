"""The base of every scripted teacher: a Policy whose turns a script writes from the decoded context."""

from __future__ import annotations

from typing import Any

from mem1_core.agent.types import PolicyInput, PolicyOutput


class ScriptedTeacher:
    """A Policy whose turns come from a script reading the decoded context and the task's gold data.

    Subclasses implement `script`; outputs longer than `max_new_tokens` are cut as a model's would be
    (the episode then fails on format), so teachers obey the same budget as the models they train.
    """

    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def script(self, context: str, item: PolicyInput) -> str:
        raise NotImplementedError

    def generate(self, batch: list[PolicyInput], stop: list[str], max_new_tokens: int) -> list[PolicyOutput]:
        outputs = []
        for item in batch:
            text = self.script(self.decode(item.context_ids), item)
            ids = self.encode(text)
            if len(ids) > max_new_tokens:
                ids = ids[:max_new_tokens]
                text = self.decode(ids)
            outputs.append(PolicyOutput(ids=ids, text=text))
        return outputs
