"""The choice of scripted teacher per domain: environments know no policy, so the choice lives here."""

from __future__ import annotations

from typing import Any

from mem1_core.agent.qa_oracle import OracleTeacher
from mem1_core.agent.scripted import ScriptedTeacher
from mem1_core.agent.shop_oracle import ShopOracleTeacher
from mem1_core.envs.domains import check_domain
from mem1_core.protocol.tags import DEFAULT_GRAMMAR, TagGrammar


def teacher_for(
    domain: str, tokenizer: Any, grammar: TagGrammar = DEFAULT_GRAMMAR, for_sft: bool = False
) -> ScriptedTeacher:
    """The scripted teacher of a domain (a Policy that reads gold data from the task).

    `for_sft`: the teacher SFT imitates, which must act on what a model sees; for shop that is the
    teacher that does not know the target product (the evaluation oracle does)."""
    if check_domain(domain) == "shop":
        return ShopOracleTeacher(tokenizer, grammar, knows_target=not for_sft)
    return OracleTeacher(tokenizer, grammar)
