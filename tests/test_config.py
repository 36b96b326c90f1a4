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
        (["--sample.select_t", "[0.5, 1.5]"], "sample.select_t"),
        (["--sample.select_t", "[]"], "sample.select_t"),
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
