import pytest
import torch
from einops import repeat

from videodit.attention import grid_angles
from videodit.checkpoint import load_dit, load_state, save_module, write_config
from videodit.config import Config, ConfigError, DiTConfig, validate
from videodit.dit import DiT
from videodit.patchify import patchify
from videodit.repatch import grow_sources, grow_state, main, repatch_state


def trained_like(patch=(1, 2, 2)):
    """A small DiT with every weight off its initial value (adaLN-Zero and the zero readout included)."""
    model = DiT(DiTConfig(hidden=64, depth=2, heads=4, text_dim=32, chunk_frames=2, patch=patch))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), Config(model=model.cfg)


def test_block_constant_latents_embed_as_before():
    old, cfg = trained_like()
    state, new_cfg = repatch_state(old.state_dict(), cfg, (1, 1, 1))
    new = type(old)(new_cfg.model)
    new.load_state_dict(state, strict=True)
    coarse = torch.randn(2, 16, 3, 4, 4)
    fine = repeat(coarse, "b c t h w -> b c t (h r1) (w r2)", r1=2, r2=2)  # every 2x2 block constant
    e_old = old.x_embed(patchify(fine, (1, 2, 2)))  # (B, T, 16, D): one token per 2x2 block
    e_new = new.x_embed(patchify(fine, (1, 1, 1))).unflatten(2, (4, 2, 4, 2))  # (B, T, h, r1, w, r2, D)
    for r1 in range(2):
        for r2 in range(2):
            torch.testing.assert_close(e_new[:, :, :, r1, :, r2].flatten(2, 3), e_old, atol=1e-5, rtol=1e-5)


def test_readout_is_the_mean_over_the_old_patch():
    old, cfg = trained_like()
    state, new_cfg = repatch_state(old.state_dict(), cfg, (1, 1, 1))
    new = type(old)(new_cfg.model)
    new.load_state_dict(state, strict=True)
    h = torch.randn(5, old.cfg.hidden)
    y_old = old.final.linear(h).view(5, 16, 2, 2)  # (c, ph, pw) per token
    torch.testing.assert_close(new.final.linear(h), y_old.mean((2, 3)), atol=1e-5, rtol=1e-5)
    assert new_cfg.model.patch == (1, 1, 1) and new_cfg.model.rope_grid_scale == 0.5
    for key, value in old.state_dict().items():  # everything else carries over unchanged
        if key not in ("x_embed.weight", "final.linear.weight", "final.linear.bias"):
            assert torch.equal(state[key], value), key


def test_grid_scale_keeps_the_old_positions():
    fine = grid_angles(torch.zeros(1), 8, 8, 32, 10000.0, scale=0.5)[0].view(8, 8, -1)
    coarse = grid_angles(torch.zeros(1), 4, 4, 32, 10000.0)[0].view(4, 4, -1)
    torch.testing.assert_close(fine[::2, ::2], coarse)


@pytest.mark.parametrize("patch", [(2, 1, 1), (1, 1, 2), (1, 3, 3)])
def test_impossible_patches_are_clear(patch):
    old, cfg = trained_like()
    with pytest.raises(ConfigError, match="patch"):
        repatch_state(old.state_dict(), cfg, patch)


def test_grid_scale_must_be_positive():
    with pytest.raises(ConfigError, match="rope_grid_scale"):
        validate(Config(model=DiTConfig(rope_grid_scale=0.0)))


def saved_like(folder):
    """trained_like()'s DiT and config, saved to folder as a checkpoint (dit.safetensors + config.yaml)."""
    old, cfg = trained_like()
    save_module(old, folder / "dit.safetensors")
    write_config(cfg, folder)
    return old, cfg, folder


def test_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    old, cfg, src = saved_like(tmp_path / "src")
    assert main(["--checkpoint", str(src), "--patch", "1", "1", "1", "--out", str(tmp_path / "p1")]) == 0
    new = load_dit(tmp_path / "p1")
    x = torch.randn(1, 16, 4, 8, 8)
    v = new(x, torch.full((1,), 0.5), torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.bool))
    assert v.shape == x.shape and torch.isfinite(v).all()

    missing = ["--checkpoint", str(tmp_path / "missing"), "--patch", "1", "1", "1", "--out", str(tmp_path / "x")]
    assert main(missing) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("depth, new_depth", [(2, 3), (2, 5)])
def test_grown_dit_computes_what_the_old_one_did(depth, new_depth):
    """New blocks start as the identity: whole-clip and chunk-by-chunk outputs (and the cache) are unchanged."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(hidden=64, depth=depth, heads=4, text_dim=32, chunk_frames=2, patch=(1, 2, 2)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    old, cfg = model.eval(), Config(model=model.cfg)
    state, new_cfg = grow_state(old.state_dict(), cfg, new_depth)
    new = DiT(new_cfg.model).eval()
    new.load_state_dict(state, strict=True)
    assert new_cfg.model.depth == new_depth and len(new.blocks) == new_depth
    x, t = torch.randn(2, 16, 4, 8, 8), torch.rand(2, 4)
    text, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(new(x, t, text, mask), old(x, t, text, mask), atol=1e-6, rtol=1e-6)
        _, kv_old = old.forward_chunk(x[:, :, :2], t[:, :2], text, mask, context=[])
        _, kv_new = new.forward_chunk(x[:, :, :2], t[:, :2], text, mask, context=[])
        v_old, _ = old.forward_chunk(x[:, :, 2:], t[:, 2:], text, mask, context=[kv_old])
        v_new, _ = new.forward_chunk(x[:, :, 2:], t[:, 2:], text, mask, context=[kv_new])
    torch.testing.assert_close(v_new, v_old, atol=1e-6, rtol=1e-6)
    # the new blocks are not dead weight: their residual outputs get gradients
    new.train()
    new(x, t, text, mask).square().mean().backward()
    added = [i for i, j in enumerate(grow_sources(depth, new_depth)) if j is None]
    assert len(added) == new_depth - depth
    for i in added:
        assert new.blocks[i].mlp[2].weight.grad.abs().sum() > 0
        assert new.blocks[i].attn_t.proj.weight.grad.abs().sum() > 0


def test_grow_layout_spreads_the_new_blocks():
    assert grow_sources(4, 6) == [0, 1, None, 2, 3, None]
    assert grow_sources(4, 8) == [0, None, 1, None, 2, None, 3, None]
    assert grow_sources(1, 3) == [0, None, None]


def test_grow_must_add_blocks():
    old, cfg = trained_like()
    with pytest.raises(ConfigError, match="--depth 2"):
        grow_state(old.state_dict(), cfg, 2)


def test_cli_grows_and_repatches(tmp_path, capsys):
    old, cfg, src = saved_like(tmp_path / "src")
    assert main(["--checkpoint", str(src), "--depth", "3", "--out", str(tmp_path / "d3")]) == 0
    assert "grew 2 -> 3 blocks" in capsys.readouterr().out
    grown = load_dit(tmp_path / "d3").eval()
    x, t = torch.randn(1, 16, 4, 8, 8), torch.full((1,), 0.5)
    text, mask = torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t, text, mask), old(x, t, text, mask), atol=1e-6, rtol=1e-6)
    both = ["--checkpoint", str(src), "--depth", "4", "--patch", "1", "1", "1", "--out", str(tmp_path / "both")]
    assert main(both) == 0
    new = load_dit(tmp_path / "both")
    assert new.cfg.depth == 4 and new.cfg.patch == (1, 1, 1)
    assert main(["--checkpoint", str(src), "--depth", "1", "--out", str(tmp_path / "shallow")]) == 2
    assert "must be more than" in capsys.readouterr().err
    assert not (tmp_path / "shallow").exists()
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(src), "--out", str(tmp_path / "none")])
    assert e.value.code == 2


def test_cli_stores_bf16_that_loads_back_close(tmp_path, capsys):
    old, cfg, src = saved_like(tmp_path / "src")
    assert main(["--checkpoint", str(src), "--bf16", "--out", str(tmp_path / "half")]) == 0
    assert "bfloat16" in capsys.readouterr().out
    assert {v.dtype for v in load_state(tmp_path / "half" / "dit.safetensors").values()} == {torch.bfloat16}
    size = (tmp_path / "half" / "dit.safetensors").stat().st_size
    assert size < 0.55 * (src / "dit.safetensors").stat().st_size
    half = load_dit(tmp_path / "half").eval()
    assert next(half.parameters()).dtype == torch.float32  # cast back on load
    x, t = torch.randn(1, 16, 4, 8, 8), torch.full((1,), 0.5)
    text, mask = torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        want, got = old(x, t, text, mask), half(x, t, text, mask)
    assert not torch.equal(got, want)  # the weights were rounded ...
    assert (got - want).norm() < 2e-2 * want.norm()  # ... to bf16's ~3 significant digits


def test_cli_reads_a_bf16_checkpoint_back_in_fp32(tmp_path, capsys):
    old, cfg, src = saved_like(tmp_path / "src")
    assert main(["--checkpoint", str(src), "--bf16", "--out", str(tmp_path / "half")]) == 0
    half = load_state(tmp_path / "half" / "dit.safetensors")
    assert main(["--checkpoint", str(tmp_path / "half"), "--depth", str(cfg.model.depth + 1),
                 "--out", str(tmp_path / "grown")]) == 0
    grown = load_state(tmp_path / "grown" / "dit.safetensors")
    assert {v.dtype for v in grown.values()} == {torch.float32}  # a float32 training init, not bf16 arithmetic
    assert torch.equal(grown["blocks.0.mlp.0.weight"], half["blocks.0.mlp.0.weight"].float())
