from pathlib import Path

import pytest

from mem1_core.config import ConfigError, EvalConfig, PipelineConfig, load_config, parse_mode, parse_section

REPO = Path(__file__).resolve().parents[1]


def test_presets_load() -> None:
    cfg = load_config(REPO / "configs" / "local-tiny.yaml")
    assert cfg.sft.model.base_model == "tiny"
    paper = load_config(REPO / "configs" / "qwen2.5-7b.yaml")
    assert paper.sft.model.base_model == "Qwen/Qwen2.5-7B"
    assert paper.compose.train_objectives == [2]
    assert (paper.ppo.actor_lr, paper.ppo.critic_lr, paper.ppo.kl_coef) == (1e-6, 1e-5, 0.001)
    assert (REPO / paper.ppo.deepspeed_config).is_file()


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_preset_validates(preset: str) -> None:
    load_config(REPO / "configs" / preset)


def test_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  steps: 0\n  bogus: 1\ncompose:\n  eval_objectives: [1, 64]\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert f"{bad}:2: ppo.steps" in msg
    assert f"{bad}:3: ppo.bogus: Extra inputs are not permitted" in msg
    assert f"{bad}:5: compose.eval_objectives" in msg and "outside 1..32" in msg


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)


def test_overrides_are_validated(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "local-tiny.yaml", {"ppo.steps": 3})
    assert cfg.ppo.steps == 3
    with pytest.raises(ConfigError, match=r"ppo\.steps"):
        load_config(REPO / "configs" / "local-tiny.yaml", {"ppo.steps": -1})


def test_modes() -> None:
    assert parse_mode("truncate:3") == ("truncate", 3)
    for bad in ("truncate:0", "truncate:x", "partial", ""):
        with pytest.raises(ValueError):
            parse_mode(bad)
    with pytest.raises(ConfigError, match="modes"):
        parse_section(EvalConfig, {"modes": ["mem1", "nope"]})


def test_section_round_trips_through_json() -> None:
    cfg = PipelineConfig()
    again = parse_section(EvalConfig, cfg.eval.model_dump_json())
    assert again == cfg.eval


def test_pretraining_is_refused_for_a_pretrained_base_model(tmp_path: Path) -> None:
    tiny = load_config(REPO / "configs" / "local-tiny.yaml", {"sft.pretrain.steps": 10})
    assert tiny.sft.pretrain.steps == 10
    bad = tmp_path / "hub.yaml"
    bad.write_text("sft:\n  model: {base_model: Qwen/Qwen2.5-0.5B}\n  pretrain: {steps: 10}\n")
    expected = r"hub\.yaml:1: sft: .*pretrain\.steps 10 needs model\.base_model 'tiny'"
    with pytest.raises(ConfigError, match=expected):
        load_config(bad)
