from __future__ import annotations

from pathlib import Path

import pytest

from aligntime.errors import ConfigError
from aligntime.policy.loader import load_policy, parse_policy, preset_names


def test_every_preset_validates() -> None:
    names = preset_names()
    assert "default" in names
    for name in names:
        policy = load_policy(name)
        assert policy.name
        assert 1 <= policy.n <= policy.max_n


def test_default_preset_has_a_safety_gate_and_weighted_scorers() -> None:
    policy = load_policy("default")
    assert policy.generator.backend == "llamacpp"
    assert policy.n == 5
    gated = [s for s in policy.scorers if s.gate is not None]
    assert gated, "the default policy must gate on safety"
    assert any(s.weight > 0 for s in policy.scorers)


def test_unknown_policy_suggests_a_preset() -> None:
    with pytest.raises(ConfigError) as info:
        load_policy("defualt")
    assert "default" in str(info.value)


def test_missing_policy_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy("/no/such/policy.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nscorers:\n  - {name: a, kind: rules\n")
    with pytest.raises(ConfigError) as info:
        load_policy(bad)
    msg = str(info.value)
    assert str(bad) in msg and "invalid YAML" in msg
    assert ":4:" in msg or ":3:" in msg


def test_unknown_top_level_field_is_named_with_its_line() -> None:
    text = "name: x\nscorrers: []\n"
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "p.yaml")
    assert "p.yaml:2: scorrers: unknown field" in str(info.value)


def test_bad_value_names_nested_field() -> None:
    text = "name: x\nscorers:\n  - name: a\n    kind: rules\n    weight: -1\n"
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "p.yaml")
    assert "p.yaml:5: scorers[0].weight" in str(info.value)


def test_unknown_scorer_kind_suggests() -> None:
    text = "name: x\nscorers:\n  - {name: a, kind: rulez}\n"
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "p.yaml")
    msg = str(info.value)
    assert "scorers[0].kind" in msg and "'rules'" in msg


def test_unknown_backend_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy("name: x\ngenerator: {backend: llamacp}\n", "p.yaml")
    assert "generator.backend" in str(info.value) and "llamacpp" in str(info.value)


def test_implementation_option_typo_is_named() -> None:
    text = "name: x\ngenerator:\n  backend: llamacpp\n  temprature: 0.5\n"
    with pytest.raises(ConfigError) as info:
        parse_policy(text, "p.yaml")
    assert "p.yaml:4: generator.temprature: unknown field" in str(info.value)


def test_strategy_option_is_validated() -> None:
    text = "name: x\nstrategy: {kind: soft_best_of_n, beta: -1}\n"
    with pytest.raises(ConfigError, match=r"strategy\.beta"):
        parse_policy(text, "p.yaml")


def test_n_above_max_n_is_rejected() -> None:
    with pytest.raises(ConfigError, match="max_n"):
        parse_policy("name: x\nn: 9\nmax_n: 4\n", "p.yaml")


def test_duplicate_scorer_names() -> None:
    text = "name: x\nscorers:\n  - {name: a, kind: rules}\n  - {name: a, kind: refusal}\n"
    with pytest.raises(ConfigError, match="unique"):
        parse_policy(text, "p.yaml")


def test_template_needs_prompt_slot() -> None:
    text = "name: x\nprompt:\n  templates:\n    t: {prompt: 'no slot'}\n"
    with pytest.raises(ConfigError, match=r"prompt\.templates\.t\.prompt"):
        parse_policy(text, "p.yaml")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        parse_policy("- a\n- b\n", "p.yaml")
