import pytest
import torch

from videodit.config import FlowConfig
from videodit.flow import flow_loss, interpolate, sample, sample_t, schedule, timestep_shift


def exact_velocity(target: torch.Tensor):
    """For a single target x0, the exact rectified-flow field at x_t is (x_t - x0) / t."""

    def v(x, t):
        return (x - target) / t.view(-1, *([1] * (x.dim() - 1)))

    return v


@pytest.mark.parametrize("method, steps", [("euler", 1), ("euler", 7), ("heun", 4)])
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("churn", [0.0, 0.5, 1.0])
def test_samplers_land_on_the_target(method, steps, shift, churn):
    target = torch.randn(2, 4, 3, 5, 5)
    g = torch.Generator().manual_seed(0)
    out = sample(exact_velocity(target), torch.randn_like(target), steps, shift=shift, method=method, churn=churn,
                 generator=g)
    assert torch.allclose(out, target, atol=1e-5)


def test_sample_from_a_partly_noised_start_runs_only_the_steps_below_it():
    """start_t < 1: the input is x at t = start_t; the run steps from start_t through the schedule's times below
    it, and with the exact field it still lands on the target."""
    target = torch.randn(1, 4, 2, 3, 3)
    seen = []

    def v(x, t):
        seen.append(float(t[0]))
        return exact_velocity(target)(x, t)

    x = interpolate(target + 0.3, torch.randn_like(target), torch.full((1,), 0.6))
    out = sample(v, x, 8, shift=3.0, start_t=0.6, churn=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-5)
    below = [t for t in schedule(8, 3.0) if 0 < t < 0.6]
    assert seen == pytest.approx([0.6] + below) and len(seen) < 8
    with pytest.raises(ValueError, match="start_t"):
        sample(v, x, 8, start_t=0.0)


def gaussian_velocity(std: float):
    """The exact field for data ~ N(0, std^2): E[eps - x0 | x_t] = (t - (1 - t) std^2) x_t / Var(x_t)."""

    def v(x, t):
        t = t.view(-1, *([1] * (x.dim() - 1)))
        return (t - (1 - t) * std**2) * x / ((1 - t) ** 2 * std**2 + t**2)

    return v


def test_churn_keeps_the_distribution_and_redraws_noise():
    """Stochastic sampling is a sampler of the same distribution: with the exact field of N(0, 0.5^2) and 100
    Euler steps it gives std 0.5 (within 0.03) at every churn; it draws from the generator (same seed, same
    samples) and churn 0 is the deterministic ODE (the generator is not touched)."""
    noise = torch.randn(2, 5000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = gaussian_velocity(0.5)
    outs = {}
    for churn in (0.0, 0.5, 1.0):
        outs[churn] = sample(v, noise, 100, churn=churn, generator=torch.Generator().manual_seed(2))
        assert abs(outs[churn].std().item() - 0.5) < 0.03 and abs(outs[churn].mean().item()) < 0.02
    assert torch.equal(outs[0.0], sample(v, noise, 100))
    assert (outs[0.5] - outs[0.0]).abs().mean() > 0.05  # fresh noise moves each sample
    again = sample(v, noise, 100, churn=0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again, outs[0.5])
    with pytest.raises(ValueError, match="churn"):
        sample(v, noise, 4, churn=1.5)


def test_heun_beats_euler_on_a_curved_field():
    # v = x (a linear ODE); the exact solution from t=1 to 0 is x1 * e^{-1}
    x1 = torch.ones(1, 3)
    exact = x1 * torch.exp(torch.tensor(-1.0))
    err = {m: (sample(lambda x, t: x, x1, 8, method=m) - exact).abs().max() for m in ("euler", "heun")}
    assert err["heun"] < err["euler"] / 10


def test_sample_t_per_chunk_and_shift():
    cfg = FlowConfig(per_chunk_t=True, clean_context_prob=0.0)
    g = torch.Generator().manual_seed(0)
    t = sample_t(4, 7, 2, tokens=256, cfg=cfg, generator=g)
    assert t.shape == (4, 7) and (t > 0).all() and (t < 1).all()
    assert torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 4], t[:, 5])
    assert not torch.equal(t[:, 0], t[:, 2])
    same = sample_t(4, 7, 2, 256, FlowConfig(per_chunk_t=False), g)
    assert (same == same[:, :1]).all()
    assert timestep_shift(256, cfg) == 1.0 and timestep_shift(256 * 4, cfg) == 2.0
    assert timestep_shift(10**9, cfg) == cfg.shift_max
    fixed = FlowConfig(shift=3.0)  # an explicit shift overrides the token-count rule, for training and sampling
    assert timestep_shift(16, fixed) == 3.0 and timestep_shift(10**9, fixed) == 3.0
    hi = sample_t(20000, 1, 1, 16, fixed, g)
    assert (hi > 0.9).float().mean() > 0.1 > (sample_t(20000, 1, 1, 16, cfg, g) > 0.9).float().mean()
    big = sample_t(20000, 1, 1, 256 * 4, cfg, g)
    assert big.mean() > 0.6  # shifted toward noise
    forced = sample_t(2000, 7, 2, 256, FlowConfig(clean_context_prob=0.5), g)
    clean = forced == 0
    assert 0.4 < clean[:, 0].float().mean() < 0.6 and not clean[:, -1].any()  # a clean prefix, never all
    assert (clean[:, 1:] <= clean[:, :-1]).all()  # only a prefix is clean
    ts = schedule(10, 2.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and all(a > b for a, b in zip(ts, ts[1:]))


def test_interpolation_and_loss_target():
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    t = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25]])
    xt = interpolate(x0, noise, t)
    assert torch.equal(xt[0, :, 0], x0[0, :, 0]) and torch.equal(xt[0, :, 2], noise[0, :, 2])
    assert flow_loss(lambda x, tt: noise - x0, x0, t, noise) == 0
    # clean frames (t = 0) are left out of the loss
    wrong_on_clean = lambda x, tt: (noise - x0) + (tt == 0).float().view(2, 1, 3, 1, 1)
    assert flow_loss(wrong_on_clean, x0, t, noise) == 0


def test_detail_weights_favour_what_stands_out_and_keep_the_loss_scale():
    from videodit.flow import detail_weights

    x0 = torch.zeros(2, 4, 3, 8, 8)
    x0[:, :, :, 2:4, 5:7] = 3.0  # a small object on a flat background
    w = detail_weights(x0, 2.0)
    assert w.shape == (2, 1, 3, 8, 8)
    assert torch.allclose(w.mean((3, 4)), torch.ones(2, 1, 3), atol=1e-5)  # mean 1 in every frame
    assert (w[:, :, :, 2:4, 5:7] > 3 * w[:, :, :, 0, 0, None, None]).all()  # the object outweighs the background
    assert torch.allclose(detail_weights(torch.full((1, 4, 2, 8, 8), 1.5), 2.0), torch.ones(1, 1, 2, 8, 8))
    noise = torch.randn_like(x0)
    t = torch.full((2, 3), 0.5)
    off_by_one = lambda x, tt: noise - x0 + 1.0  # error 1 everywhere: the weighted loss is still 1
    assert torch.isclose(flow_loss(off_by_one, x0, t, noise, detail_weight=2.0), torch.tensor(1.0))
    on_object = lambda x, tt: noise - x0 + (x0 > 0).float()  # errors on the object alone weigh more
    assert flow_loss(on_object, x0, t, noise, detail_weight=2.0) > 2 * flow_loss(on_object, x0, t, noise)


def test_negative_shift_is_a_config_error():
    from videodit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="flow.shift"):
        load_config(None, {"flow.shift": -1.0})
    with pytest.raises(ConfigError, match="flow.detail_weight"):
        load_config(None, {"flow.detail_weight": -0.5})


def test_uniform_share_of_t_covers_the_noisy_end_sampling_starts_from():
    from videodit.config import ConfigError, load_config

    g = torch.Generator().manual_seed(0)
    base = sample_t(50000, 1, 1, 16, FlowConfig(shift=3.0), g)
    mixed = sample_t(50000, 1, 1, 16, FlowConfig(shift=3.0, uniform_t_prob=0.3), g)
    assert (base > 0.97).float().mean() < 0.012 and 0.025 < (mixed > 0.97).float().mean() < 0.04
    assert (mixed > 0).all() and (mixed < 1).all()
    with pytest.raises(ConfigError, match="uniform_t_prob"):
        load_config(None, {"flow.uniform_t_prob": 1.5})
    with pytest.raises(ConfigError, match="tiny_tokenizer"):
        load_config(None, {"text.tiny_tokenizer": "sentencepiece"})


def test_clean_first_frame_share_and_unchanged_draws_when_off():
    from videodit.config import ConfigError, load_config

    cfg = FlowConfig(clean_context_prob=0.5)
    a = sample_t(4000, 7, 2, 256, cfg, torch.Generator().manual_seed(0))
    b = sample_t(4000, 7, 2, 256, FlowConfig(clean_context_prob=0.5, clean_first_frame_prob=0.4),
                 torch.Generator().manual_seed(0))
    changed = (a != b).any(1)
    assert torch.equal(a[:, 1:], b[:, 1:])  # only the first frame changes, and only to clean
    assert (b[changed, 0] == 0).all() and (a[changed, 0] > 0).all()
    noisy_start = a[:, 0] > 0
    assert 0.35 < changed[noisy_start].float().mean() < 0.45  # of the clips whose first chunk is noisy
    assert ((b[:, 0] == 0) & (b[:, 1] > 0)).float().mean() > 0.15  # a known first frame, the rest of its chunk noisy
    with pytest.raises(ConfigError, match="clean_first_frame_prob"):
        load_config(None, {"flow.clean_first_frame_prob": -0.1})


def test_anchor_gap_cuts_clips_as_chunked_sampling_lays_out_its_cache():
    from videodit.config import ConfigError, load_config
    from videodit.flow import anchor_gap_index, take_frames

    B, C, T, H, W, chunk, keep = 400, 3, 21, 2, 2, 2, 3
    x = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1).expand(B, C, T, H, W).contiguous()
    x = x + 100 * torch.arange(B).view(B, 1, 1, 1, 1)  # frame f of clip b holds 100 b + f
    index = anchor_gap_index(B, T, chunk, keep, 0.5, torch.Generator().manual_seed(0))
    y = take_frames(x, index)
    assert y.shape == (B, C, chunk * (1 + keep), H, W)
    frames = (y[:, 0, :, 0, 0] - 100 * torch.arange(B)[:, None]).long()  # which frame of its own clip
    assert torch.equal(frames[:, :chunk], torch.arange(chunk).expand(B, -1))  # the anchor: the first chunk
    run = frames[:, chunk:]
    assert torch.equal(run - run[:, :1], torch.arange(keep * chunk).expand(B, -1))  # then one contiguous run
    start = run[:, 0]
    assert (start % chunk == 0).all() and (start + keep * chunk <= T).all()  # chunk-aligned, inside the clip
    gapped = start > chunk
    assert 0.4 < gapped.float().mean() < 0.6  # the share asked for; the rest is the clip's start as it is
    assert (start[~gapped] == chunk).all()
    assert set(start[gapped].tolist()) == set(range(2 * chunk, T - keep * chunk + 1, chunk))  # every gap occurs
    # too short for a gap of one chunk: the clip is trained whole
    assert anchor_gap_index(B, chunk * (2 + keep) - 1, chunk, keep, 1.0, None) is None
    assert anchor_gap_index(B, chunk * (2 + keep), chunk, keep, 1.0, None) is not None
    with pytest.raises(ConfigError, match="anchor_gap_prob"):
        load_config(None, {"flow.anchor_gap_prob": 1.5})
    with pytest.raises(ConfigError, match="per_chunk_t"):
        load_config(None, {"flow.anchor_gap_prob": 0.5, "flow.per_chunk_t": False})


@pytest.mark.parametrize("uniform", [0.0, 0.3])
def test_t_max_draws_the_same_distribution_conditioned_below_it(uniform):
    """flow.t_max (a low-noise expert's training): every t <= t_max, distributed as the full draws that fall
    below t_max (compared by quantiles with rejection sampling); t_max 1 leaves the draws unchanged."""
    from videodit.config import ConfigError, load_config

    cfg = FlowConfig(shift=3.0, uniform_t_prob=uniform, clean_context_prob=0.0)
    full = sample_t(400000, 1, 1, 16, cfg, torch.Generator().manual_seed(0)).flatten()
    kept = full[full <= 0.6]
    low = sample_t(100000, 1, 1, 16, FlowConfig(shift=3.0, uniform_t_prob=uniform, clean_context_prob=0.0,
                                                t_max=0.6), torch.Generator().manual_seed(1)).flatten()
    assert low.max() <= 0.6 and low.min() > 0
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    torch.testing.assert_close(torch.quantile(low, q), torch.quantile(kept[:100000], q), atol=0.01, rtol=0)
    same = sample_t(1000, 9, 2, 16, FlowConfig(t_max=1.0), torch.Generator().manual_seed(2))
    assert torch.equal(same, sample_t(1000, 9, 2, 16, FlowConfig(), torch.Generator().manual_seed(2)))
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="flow.t_max"):
            load_config(None, {"flow.t_max": bad})
