import warnings
from pathlib import Path

import pytest

from mem1_core.config import (
    ConfigError,
    DeprecatedNameWarning,
    EvalConfig,
    PipelineConfig,
    RegisterConfig,
    load_config,
    parse_mode,
    parse_section,
)

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


OLD_REGISTER = "registry:\n  model_name: old-agent\n  em_floor: 0.3\n"


def test_old_register_keys_load_with_a_warning_naming_the_new_ones(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(OLD_REGISTER)
    with pytest.warns(DeprecatedNameWarning) as seen:
        cfg = load_config(old)
    assert (cfg.register.model_name, cfg.register.gate_floor) == ("old-agent", 0.3)
    messages = [str(w.message) for w in seen]
    assert "config key 'registry' is deprecated: use 'register'" in messages
    assert "config key 'register.em_floor' is deprecated: use 'register.gate_floor'" in messages
    with pytest.warns(DeprecatedNameWarning, match="'em_floor' is deprecated: use 'gate_floor'"):
        assert RegisterConfig(em_floor=0.2).gate_floor == 0.2
    with pytest.warns(DeprecatedNameWarning, match="'registry' is deprecated: use 'register'"):
        assert PipelineConfig.model_validate({"registry": {"gate_floor": 0.1}}).register.gate_floor == 0.1


def test_an_old_override_key_wins_over_the_new_file(tmp_path: Path) -> None:
    with pytest.warns(
        DeprecatedNameWarning, match="'registry.em_floor' is deprecated: use 'register.gate_floor'"
    ):
        cfg = load_config(REPO / "configs" / "local-tiny.yaml", {"registry.em_floor": 0.4})
    assert cfg.register.gate_floor == 0.4
    old = tmp_path / "old.yaml"
    old.write_text(OLD_REGISTER)
    with pytest.warns(DeprecatedNameWarning):
        cfg = load_config(old, {"register.gate_floor": 0.5})
    assert (cfg.register.model_name, cfg.register.gate_floor) == ("old-agent", 0.5)


def test_new_names_load_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedNameWarning)
        for preset in sorted((REPO / "configs").glob("*.yaml")):
            load_config(preset, {"register.gate_floor": 0.1})
        assert RegisterConfig(gate_floor=0.1).gate_floor == 0.1


def test_old_and_new_names_that_disagree_are_refused(tmp_path: Path) -> None:
    both = tmp_path / "both.yaml"
    both.write_text("register:\n  gate_floor: 0.1\nregistry:\n  gate_floor: 0.2\n")
    with pytest.warns(DeprecatedNameWarning), pytest.raises(ConfigError, match="keep only register"):
        load_config(both)
    with pytest.warns(DeprecatedNameWarning), pytest.raises(ConfigError, match="keep only gate_floor"):
        parse_section(RegisterConfig, {"em_floor": 0.1, "gate_floor": 0.2})
    same = tmp_path / "same.yaml"
    same.write_text("register:\n  gate_floor: 0.1\n  em_floor: 0.1\n")
    with pytest.warns(DeprecatedNameWarning):
        assert load_config(same).register.gate_floor == 0.1


def test_errors_under_an_old_key_still_name_its_line(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("ppo:\n  steps: 1\nregistry:\n  gate_objectives: 0\n")
    with (
        pytest.warns(DeprecatedNameWarning),
        pytest.raises(ConfigError, match=rf"{old}:4: register\.gate_objectives"),
    ):
        load_config(old)


def test_baselines_can_run_at_fewer_objective_counts() -> None:
    from mem1_core.config import EvalConfig

    cfg = EvalConfig(objectives=[1, 2, 4], modes=["mem1", "full"], baseline_objectives=[4])
    cells = [(m, n) for m in cfg.modes for n in cfg.objectives if cfg.runs_cell(m, n)]
    assert cells == [("mem1", 1), ("mem1", 2), ("mem1", 4), ("full", 4)]
    assert all(EvalConfig(modes=["mem1", "full"]).runs_cell("full", n) for n in (1, 2, 4, 8, 16))
    fewer = cfg.model_copy(update={"baseline_tasks": 8})
    assert [fewer.tasks_in_cell(n) for n in (1, 2, 4)] == [16, 16, 8]
    assert [cfg.tasks_in_cell(n) for n in (1, 2, 4)] == [16, 16, 16]
    with pytest.raises(ValueError, match=r"baseline_objectives \[8\] are not in objectives \[1, 2\]"):
        EvalConfig(objectives=[1, 2], baseline_objectives=[8])
