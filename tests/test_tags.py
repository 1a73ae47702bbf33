"""Fuzzing the tag grammar: parse_turn never raises or stalls, round-trips, and escaping holds."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mem1_core.protocol.tags import (
    DEFAULT_GRAMMAR,
    MAX_PARSE_CHARS,
    REFERENCE_GRAMMAR,
    Action,
    FormatError,
    ParsedTurn,
    TagGrammar,
    escape_observation,
    format_info,
    parse_turn,
    split_answers,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fragments(g: TagGrammar) -> list[str]:
    tags = [t for tag in g.all_tags for t in (g.open(tag), g.close(tag))]
    return [*tags, "<", ">", "/", "</", g.answer_separator, " ", "\n", "x", "y z", "‹", "›", "<<", ">>"]


def _pairs(g: TagGrammar) -> list[str]:
    return [f"{g.open(t)}{body}{g.close(t)}" for t in g.all_tags for body in ("", "v", " a; b ", ";")]


def _soup(g: TagGrammar) -> st.SearchStrategy[str]:
    """Text made of tag pieces (whole pairs, nested, unclosed, interleaved) and arbitrary unicode."""
    piece = st.one_of(st.sampled_from(_fragments(g)), st.sampled_from(_pairs(g)), st.text(max_size=8))
    return st.lists(piece, max_size=30).map("".join)


def _reference_parse(text: str, g: TagGrammar) -> ParsedTurn:
    """The original regex parser (quadratic on unclosed tags) as an oracle on short inputs."""
    state_re = re.compile(rf"<{re.escape(g.state)}>(.*?)</{re.escape(g.state)}>", re.S)
    kinds = "|".join(re.escape(t) for t in (g.query, g.answer, g.action))
    action_re = re.compile(rf"<({kinds})>(.*?)</\1>", re.S)
    sm = state_re.search(text)
    state = sm.group(1).strip() if sm else None
    rest = text[sm.end() :] if sm else text
    am = action_re.search(rest)
    if am is None:
        reason = "no closed action tag" if state is not None else "no internal state and no action"
        return ParsedTurn(state, FormatError(reason), len(text))
    tag, content = am.group(1), am.group(2).strip()
    if tag == g.answer:
        answers = split_answers(content, g.answer_separator)
        if not answers:
            return ParsedTurn(state, FormatError("empty answer"), len(text))
        return ParsedTurn(state, Action("answer", content, answers), len(text))
    if not content:
        return ParsedTurn(state, FormatError(f"empty <{tag}>"), len(text))
    return ParsedTurn(state, Action("query" if tag == g.query else "action", content), len(text))


@FUZZ
@given(st.text(max_size=300))
def test_random_text_never_raises(text: str) -> None:
    parsed = parse_turn(text)
    assert isinstance(parsed, ParsedTurn)
    assert parsed.ok == isinstance(parsed.action, Action)


@FUZZ
@given(
    st.sampled_from([DEFAULT_GRAMMAR, REFERENCE_GRAMMAR]).flatmap(lambda g: st.tuples(st.just(g), _soup(g)))
)
def test_tag_soup_parses_like_the_reference_regex(case: tuple[TagGrammar, str]) -> None:
    g, text = case
    assert parse_turn(text, g) == _reference_parse(text, g)


def test_huge_and_pathological_inputs_do_not_stall() -> None:
    # Each of these took ~50 s with the backtracking regex; the linear scan answers at once.
    cases = {
        "<query>" * 30_000: "no internal state and no action",
        "<IS>" * 50_000: "no internal state and no action",
        "<IS>s</IS>" + "<answer>x" * 20_000: "no closed action tag",
        "<IS><query><answer></IS>" * 8_000: "no closed action tag",
    }
    for text, reason in cases.items():
        parsed = parse_turn(text)
        assert parsed.action == FormatError(reason)
    long_ok = "<IS>" + "m" * 150_000 + "</IS><query>q</query>"
    assert parse_turn(long_ok).action == Action("query", "q")
    cut = "<IS>s</IS><query>" + "x" * (MAX_PARSE_CHARS + 10) + "</query>"
    parsed = parse_turn(cut)
    assert not parsed.ok and parsed.raw_len == len(cut)
    assert parse_turn(None).action == FormatError("output is not text")  # type: ignore[arg-type]


_plain = st.text(alphabet=st.characters(blacklist_characters="<>;", blacklist_categories=["Cs"]), max_size=60)


@FUZZ
@given(_plain, _plain.filter(lambda s: s.strip() != ""))
def test_well_formed_query_round_trips(state: str, query: str) -> None:
    for g in (DEFAULT_GRAMMAR, REFERENCE_GRAMMAR):
        text = f"{g.open(g.state)}{state}{g.close(g.state)}{g.open(g.query)}{query}{g.close(g.query)}"
        parsed = parse_turn(text + "trailing junk <answer>ignored</answer>", g)
        assert parsed.state == state.strip()
        assert parsed.action == Action("query", query.strip())


@FUZZ
@given(_plain, st.lists(_plain.filter(lambda s: s.strip() != ""), min_size=1, max_size=16))
def test_well_formed_answers_round_trip(state: str, answers: list[str]) -> None:
    text = f"<IS>{state}</IS><answer>{'; '.join(answers)}</answer>"
    parsed = parse_turn(text)
    assert parsed.ok and isinstance(parsed.action, Action) and parsed.action.kind == "answer"
    assert parsed.action.answers == tuple(a.strip() for a in answers)


@FUZZ
@given(st.text(max_size=400) | _soup(DEFAULT_GRAMMAR) | _soup(REFERENCE_GRAMMAR))
def test_escaped_observations_never_parse_as_actions(text: str) -> None:
    escaped = escape_observation(text)
    assert "<" not in escaped and ">" not in escaped
    for g in (DEFAULT_GRAMMAR, REFERENCE_GRAMMAR):
        assert not parse_turn(escaped, g).ok
        info = format_info(text, g)
        assert info.count(g.close(g.info)) == 1 and info.endswith(g.close(g.info))
        # after a state, the observation still offers no action to a parser reading on
        after_state = parse_turn(f"{g.open(g.state)}s{g.close(g.state)}{info}", g)
        assert not after_state.ok and after_state.state == "s"


def test_split_answers_is_tolerant() -> None:
    assert split_answers("a; b ;c") == ("a", "b", "c")
    assert split_answers("a;;c;;") == ("a", "", "c")
    assert split_answers(" ; ") == ()
    assert parse_turn("<IS>s</IS><answer> ; </answer>").action == FormatError("empty answer")


def test_prompt_lists_each_question_under_the_marker_the_state_uses() -> None:
    """`Qj: ...` lines, last: the oracle state's open question `Qj: <question>` then copies one line."""
    from mem1_core.envs.qa import qa_prompt

    prompt = qa_prompt(["Who founded Acme Labs?", "  In which city was Ada Vole born? "], 6)
    assert prompt.endswith(
        "You have 6 turns.\nQ1: Who founded Acme Labs?\nQ2: In which city was Ada Vole born?\n"
    )
    assert prompt.startswith("Answer 2 questions.")
    assert qa_prompt(["Who?"], 4).startswith("Answer 1 question.") and qa_prompt(["Who?"], 4).endswith(
        "\nQ1: Who?\n"
    )
