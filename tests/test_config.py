"""Typed configuration: presets (LEAP.md §4 and §5), TOML, --set overrides, validation errors."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
import torch

from leap_rl.config import (PRESETS, RLLIB_DEFAULTS, A2CConfig, ConfigError, EnvConfig, MetaConfig,
                            RLlibConfig, RunConfig, dumps_toml, from_dict, load, merge,
                            parse_override, preset, to_dict)
from leap_rl.leap import LeapConfig

torch.set_num_threads(1)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# ----------------------------------------------------------------------------- presets

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_load(name):
    cfg = preset(name)
    assert isinstance(cfg, RunConfig)
    assert load(name) == cfg


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        preset("papr")
    assert "papr" in one_line(exc)


def test_paper_preset_has_the_papers_values():
    cfg = preset("paper")
    assert cfg.env.num_envs == 32
    assert cfg.a2c.unroll == 5
    assert cfg.a2c.lr == 1e-4
    assert cfg.a2c.rms_eps == 1e-4
    assert cfg.a2c.rms_alpha == 0.99
    assert cfg.a2c.entropy_coef == 0.01
    assert cfg.a2c.reward_clip == "clamp" and cfg.a2c.reward_clip_bound == 5.0
    assert cfg.a2c.gamma == 0.99
    assert cfg.model.network == "mnih2013"
    assert cfg.leap.metric == "energy"
    assert cfg.meta.tasks_per_step == 16
    assert cfg.meta.env_steps_per_task == 5_000_000
    assert cfg.meta.meta_steps == 100
    assert cfg.meta.games == ()  # the derived pool, not a hand-picked list


def test_baselines_preset_has_openai_baselines_values():
    cfg = preset("baselines")
    assert cfg.env.num_envs == 16
    assert cfg.a2c.unroll == 5
    assert cfg.a2c.lr == 7e-4
    assert cfg.a2c.rms_alpha == 0.99
    assert cfg.a2c.rms_eps == 1e-5
    assert cfg.a2c.entropy_coef == 0.01
    assert cfg.a2c.value_coef == 0.5
    assert cfg.a2c.max_grad_norm == 0.5
    assert cfg.a2c.gamma == 0.99
    assert cfg.a2c.reward_clip == "sign"
    assert cfg.model.network == "nature"
    assert cfg.env.noop_max == 30
    assert cfg.env.frame_skip == 4
    assert cfg.env.life_loss_terminal is True
    assert cfg.env_steps_per_update == 16 * 5


def test_leap_defaults_are_the_reference_codes():
    cfg = LeapConfig()
    assert (cfg.metric, cfg.loss, cfg.stabilizer) == ("length", True, True)


# ----------------------------------------------------------------------------- TOML and --set

def test_toml_file_then_overrides_apply(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('seed = 7\n[a2c]\nlr = 3e-4\nunroll = 10\n[meta]\ngames = ["pong", "qbert"]\n'
                 '[leap]\nmetric = "length"\nstabilizer = false\n')
    cfg = load("paper", f, ("a2c.lr=1e-3", "meta.optimizer=sgd", "leap.loss=false"))
    assert cfg.seed == 7
    assert cfg.a2c.unroll == 10
    assert cfg.a2c.lr == 1e-3           # --set wins over the file
    assert cfg.meta.games == ("pong", "qbert")
    assert cfg.meta.optimizer == "sgd"  # a bare word is read as a string
    assert cfg.leap == LeapConfig(metric="length", loss=False, stabilizer=False)
    # Untouched values keep the preset's.
    assert cfg.env.num_envs == 32 and cfg.a2c.rms_eps == 1e-4


def test_int_accepted_for_float_field():
    cfg = load("baselines", None, ("a2c.lr=1",))
    assert cfg.a2c.lr == 1.0 and isinstance(cfg.a2c.lr, float)


def test_parse_override_nests_keys():
    assert parse_override("a2c.lr=1e-4") == {"a2c": {"lr": 1e-4}}
    assert parse_override("seed=3") == {"seed": 3}
    assert parse_override('meta.games=["a","b"]') == {"meta": {"games": ["a", "b"]}}


@pytest.mark.parametrize("override,field", [
    ("a2c.lrr=1e-4", "a2c.lrr"),
    ("nope=1", "nope"),
    ("env.num_envz=4", "env.num_envz"),
])
def test_unknown_key_names_the_field(override, field):
    with pytest.raises(ConfigError) as exc:
        load("baselines", None, (override,))
    assert field in one_line(exc)


@pytest.mark.parametrize("override,field", [
    ("a2c.lr=abc", "a2c.lr"),
    ("env.num_envs=2.5", "env.num_envs"),
    ("env.num_envs=true", "env.num_envs"),
    ('env.num_envs="8"', "env.num_envs"),
    ("leap.loss=1", "leap.loss"),
    ("meta.games=pong", "meta.games"),
    ("meta.games=[1, 2]", "meta.games"),
    ("env=3", "env"),
    ("seed=1.5", "seed"),
])
def test_wrong_type_names_the_field(override, field):
    with pytest.raises(ConfigError) as exc:
        load("baselines", None, (override,))
    assert field in one_line(exc)


@pytest.mark.parametrize("override,field", [
    ("meta.env_steps_per_task=-1", "meta.env_steps_per_task"),
    ("meta.env_steps_per_task=0", "meta.env_steps_per_task"),
    ("meta.meta_steps=-5", "meta.meta_steps"),
    ("meta.tasks_per_step=0", "meta.tasks_per_step"),
    ("env.num_envs=0", "env.num_envs"),
    ("a2c.unroll=-1", "a2c.unroll"),
    ("a2c.lr=-1e-4", "a2c.lr"),
    ("a2c.lr=nan", "a2c.lr"),
    ("a2c.gamma=1.5", "a2c.gamma"),
    ("meta.max_staleness=-1", "meta.max_staleness"),
    ("runtime.workers=0", "runtime.workers"),
    ("seed=-1", "seed"),
    ("leap.eps=0", "leap.eps"),
])
def test_out_of_range_names_the_field(override, field):
    with pytest.raises(ConfigError) as exc:
        load("baselines", None, (override,))
    assert field in one_line(exc)


@pytest.mark.parametrize("override,field", [
    ("leap.metric=area", "leap.metric"),
    ("a2c.reward_clip=clip", "a2c.reward_clip"),
    ("model.network=resnet", "model.network"),
    ("meta.optimizer=rmsprop", "meta.optimizer"),
    ("meta.mode=semi", "meta.mode"),
    ("runtime.device=tpu", "runtime.device"),
])
def test_bad_literal_names_the_field_and_the_choices(override, field):
    with pytest.raises(ConfigError) as exc:
        load("baselines", None, (override,))
    msg = one_line(exc)
    assert field in msg
    bad = override.split("=", 1)[1]
    assert bad in msg


def test_override_without_equals_sign():
    with pytest.raises(ConfigError) as exc:
        load("baselines", None, ("a2c.lr",))
    assert "a2c.lr" in one_line(exc)


def test_errors_in_toml_file_name_the_field(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[meta]\nenv_steps_per_task = -10\n")
    with pytest.raises(ConfigError) as exc:
        load("quick", f)
    assert "meta.env_steps_per_task" in one_line(exc)
    f.write_text("[a2c]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError) as exc:
        load("quick", f)
    assert "a2c.learning_rate" in one_line(exc)
    f.write_text('[leap]\nmetric = "curvature"\n')
    with pytest.raises(ConfigError) as exc:
        load("quick", f)
    assert "leap.metric" in one_line(exc)


def test_missing_and_invalid_toml_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load("quick", tmp_path / "absent.toml")
    assert "absent.toml" in one_line(exc)
    f = tmp_path / "broken.toml"
    f.write_text("[a2c\nlr = \n")
    with pytest.raises(ConfigError) as exc:
        load("quick", f)
    assert "broken.toml" in one_line(exc)


def test_validation_happens_at_construction():
    with pytest.raises(ConfigError):
        EnvConfig(num_envs=0)
    with pytest.raises(ConfigError):
        A2CConfig(reward_clip="clip")
    with pytest.raises(ConfigError):
        MetaConfig(games=["pong"])  # a list, not a tuple
    with pytest.raises(ValueError):
        LeapConfig(metric="area")


def test_merge_leaves_base_untouched():
    base = preset("paper")
    new = merge(base, {"a2c": {"lr": 0.5}})
    assert new.a2c.lr == 0.5 and base.a2c.lr == 1e-4


# ----------------------------------------------------------------------------- dumps_toml round trip

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dumps_toml_round_trips(name):
    cfg = preset(name)
    back = from_dict(tomllib.loads(dumps_toml(cfg)))
    assert back == cfg


def test_dumps_toml_round_trips_non_default_values():
    cfg = load("paper", None, (
        "seed=12345", "a2c.lr=3.3e-5", "a2c.max_grad_norm=0", "leap.loss=false", "leap.eps=1e-9",
        'meta.games=["pong", "qbert", "ms_pacman"]', "meta.mode=async", "meta.max_staleness=3",
        "runtime.gpus_per_worker=0.25", "env.full_action_space=true",
        "model.encoder_includes_fc=false",
    ))
    cfg = dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, games=('we"ird', "back\\slash")))
    text = dumps_toml(cfg)
    back = from_dict(tomllib.loads(text))
    assert back == cfg
    assert to_dict(back) == to_dict(cfg)


# ----------------------------------------------------------------------------- inner, [rllib]

def test_inner_defaults_to_this_projects_a2c():
    for name in PRESETS:
        assert preset(name).inner == "a2c"
        assert preset(name).rllib.algorithm == "PPO"


def test_rllib_settings_lie_over_the_algorithms_defaults():
    cfg = load("baselines", None, ('inner="rllib"', "rllib.settings.lr=1e-4"))
    settings = cfg.rllib.algorithm_settings
    assert settings["lr"] == 1e-4
    assert settings["num_epochs"] == RLLIB_DEFAULTS["PPO"]["num_epochs"]
    assert RLLIB_DEFAULTS["PPO"]["lr"] == 2.5e-4, "the defaults table is not changed"


def test_rllib_settings_merge_key_by_key(tmp_path):
    """--set on one key keeps the preset's other keys; a TOML table adds to them too."""
    ci = preset("ci").rllib.settings
    cfg = load("ci", None, ("rllib.settings.num_epochs=7",))
    assert cfg.rllib.settings == {**ci, "num_epochs": 7}
    toml = tmp_path / "x.toml"
    toml.write_text('inner = "rllib"\n[rllib]\nalgorithm = "APPO"\nsettings = { lr = 0.001, model = { a = [1, 2] } }\n')
    cfg = load("ci", toml)
    assert cfg.inner == "rllib" and cfg.rllib.algorithm == "APPO"
    assert cfg.rllib.settings == {**ci, "lr": 0.001, "model": {"a": [1, 2]}}


def test_rllib_section_round_trips_through_toml():
    cfg = load("ci", None, ('inner="rllib"', 'rllib.algorithm="IMPALA"', 'rllib.settings.lr=3e-4',
                            'rllib.settings.grad_clip_by="value"', "rllib.settings.use_kl_loss=false",
                            'rllib.settings.odd_list=[1, 2.5, "x"]'))
    cfg = dataclasses.replace(cfg, rllib=dataclasses.replace(
        cfg.rllib, settings={**cfg.rllib.settings, "needs quotes": {"a.b": 'q"uote'}}))
    back = from_dict(tomllib.loads(dumps_toml(cfg)))
    assert back == cfg


@pytest.mark.parametrize("override, names", [
    ('inner="ppo"', "inner"),
    ('rllib.algorithm="DQN"', "rllib.algorithm"),
    ("rllib.settings=3", "rllib.settings"),
    ('rllib.settings.env="x"', "rllib.settings.env"),
    ("rllib.settings.num_envs_per_env_runner=8", "rllib.settings.num_envs_per_env_runner"),
    ("rllib.algorithm=1", "rllib.algorithm"),
    ("rllib.nonsense=1", "rllib.nonsense"),
])
def test_bad_rllib_values_are_one_line_errors(override, names):
    with pytest.raises(ConfigError) as exc:
        load("ci", None, ('inner="rllib"', override))
    assert names in one_line(exc)


def test_rllib_settings_hold_only_toml_values():
    with pytest.raises(ConfigError) as exc:
        RLlibConfig(settings={"lr": None})
    assert "rllib.settings.lr" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        RLlibConfig(settings={"x": [1, object()]})
    assert "rllib.settings.x[1]" in one_line(exc)


def test_rllib_inner_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError) as exc:
        load("ci", None, ('inner="rllib"', 'leap.loss_signal="value"'))
    assert "leap.loss_signal" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        load("ci", None, ('inner="rllib"', 'meta.games=["breakout:mode=4"]'))
    assert "meta.games" in one_line(exc)
    # the A2C path keeps both
    assert load("ci", None, ('leap.loss_signal="value"',)).leap.loss_signal == "value"
