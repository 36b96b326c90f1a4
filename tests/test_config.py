import pytest

from videodit.config import DIT_PRESETS, Config, ConfigError, from_dict, load_config, save_config, to_dict


def test_preset_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model:\n  preset: small\n  depth: 3\ntrain:\n  lr: 3.0e-4\n")
    cfg = load_config(y, ["--model.heads", "8", "--train.betas=[0.9, 0.95]"])
    assert cfg.model.hidden == DIT_PRESETS["small"]["hidden"]
    assert cfg.model.depth == 3 and cfg.model.heads == 8
    assert cfg.train.lr == 3e-4 and cfg.train.betas == (0.9, 0.95)


def test_round_trip(tmp_path):
    cfg = load_config(None, ["--model.depth", "2", "--data.frames", "9"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again, Config)
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, needle",
    [
        (["--model.dpth", "4"], "model.dpth"),
        (["--model.depth", "four"], "model.depth"),
        (["--train.lr", "fast"], "train.lr"),
        (["--model.patch", "[1, 2]"], "model.patch"),
        (["--modl.depth", "4"], "modl"),
        (["--model.preset", "huge"], "model.preset"),
        (["--data.frames", "16"], "data.frames"),
        (["--model.text_refiner", "-1"], "model.text_refiner"),
        (["--train.lr", "0"], "train.lr"),
        (["--train.lr", "nan"], "train.lr"),
        (["--train.lr", "-1e-4"], "train.lr"),
        (["--train.log_every", "0"], "train.log_every"),
        (["--train.ckpt_every", "0"], "train.ckpt_every"),
        (["--train.ema_decay", "1.0"], "train.ema_decay"),
        (["--train.ema_decay", "-0.1"], "train.ema_decay"),
        (["--train.warmup_steps", "-5"], "train.warmup_steps"),
        (["--train.grad_clip", "inf"], "train.grad_clip"),
        (["--train.betas", "[0.9, 1.0]"], "train.betas"),
        (["--sample.churn", "2"], "sample.churn"),
        (["--sample.steps", "0"], "sample.steps"),
        (["--sample.cfg_scale", "-2"], "sample.cfg_scale"),
        (["--sample.window_chunks", "-2"], "sample.window_chunks"),
        (["--sample.sampler", "dpm"], "sample.sampler"),
        (["--sample.best_of", "3"], "was removed"),
        (["--flow.temporal_weight", "0.5"], "temporal_weight' was removed"),
        (["--sample.expert_t", "1.5"], "sample.expert_t"),
        (["--flow.t_max", "0"], "flow.t_max"),
        (["depth=4"], "--section.key"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, override)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_retired_keys_at_their_off_value_still_load():
    """A config written before an option was removed (a shipped checkpoint, an old run) loads when it has it off."""
    cfg = load_config(None, {"sample.best_of": 1, "sample.select_t": [0.3, 0.5], "sample.warm_start": 0.0,
                             "vae.latent_noise": 0.0, "sample.cfg_scale_later": -1})
    assert cfg.sample.cfg_scale_later is None


def test_config_file_that_is_not_text_names_the_file(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_bytes(b"\xff\xfe\x00model: \x80\x81")
    with pytest.raises(ConfigError, match="config.yaml' is not UTF-8"):
        load_config(bad)


def test_configuration_reference_is_up_to_date():
    """docs/configuration.md is generated from the dataclasses: regenerate it with
    `python -m videodit.config --doc docs/configuration.md` after changing a key."""
    from pathlib import Path

    from videodit.config import Config, reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    text = reference()
    assert doc.read_text() == text, "stale: run python -m videodit.config --doc docs/configuration.md"
    for section in ("model", "vae", "text", "flow", "data", "train", "sample"):  # every key is listed
        for key in vars(getattr(Config(), section)):
            assert f"| `{section}.{key}` |" in text
