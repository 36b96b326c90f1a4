import pytest
import torch

from videodit.config import DiTConfig
from videodit.dit import DiT
from videodit.flow import flow_loss


def small_dit(**kw) -> DiT:
    cfg = DiTConfig(hidden=64, depth=2, heads=4, text_dim=32, chunk_frames=2, **kw)
    model = DiT(cfg)
    # leave adaLN-Zero behind so that every path carries signal in these behavioural tests
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs(B=2, T=6, H=8, W=8, L=7):
    x = torch.randn(B, 16, T, H, W)
    t = torch.rand(B, T)
    text = torch.randn(B, L, 32)
    mask = torch.ones(B, L, dtype=torch.bool)
    return x, t, text, mask


def test_zero_init_output_is_zero():
    model = DiT(DiTConfig(hidden=64, depth=2, heads=4, text_dim=32))
    x, t, text, mask = inputs()
    assert model(x, t, text, mask).abs().max() == 0


def test_block_causal_over_chunks():
    model = small_dit()
    x, t, text, mask = inputs(T=6)
    y = model(x, t, text, mask)
    x2, t2 = x.clone(), t.clone()
    x2[:, :, 4:] = torch.randn_like(x2[:, :, 4:])  # the last chunk
    t2[:, 4:] = 0.9
    y2 = model(x2, t2, text, mask)
    assert torch.equal(y[:, :, :4], y2[:, :, :4])
    assert (y[:, :, 4:] - y2[:, :, 4:]).abs().max() > 1e-3
    # inside a chunk attention is bidirectional: frame 2 sees frame 3
    x3 = x.clone()
    x3[:, :, 3] += 1
    assert (model(x3, t, text, mask)[:, :, 2] - y[:, :, 2]).abs().max() > 1e-4


def test_one_chunk_is_fully_bidirectional():
    model = small_dit(patch=(1, 2, 2))
    model.cfg.chunk_frames = 6
    x, t, text, mask = inputs(T=6)
    x2 = x.clone()
    x2[:, :, 5] += 1
    assert (model(x2, t, text, mask)[:, :, 0] - model(x, t, text, mask)[:, :, 0]).abs().max() > 1e-4


def test_text_padding_is_masked():
    model = small_dit()
    x, t, text, mask = inputs(L=5)
    y = model(x, t, text, mask)
    padded = torch.cat([text, 100 * torch.randn(2, 4, 32)], dim=1)
    pmask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    assert torch.allclose(model(x, t, padded, pmask), y, atol=1e-5)
    # and the text does matter
    assert (model(x, t, torch.randn_like(text), mask) - y).abs().max() > 1e-3


def test_per_frame_timesteps_matter_and_scalar_t_broadcasts():
    model = small_dit()
    x, _, text, mask = inputs()
    t = torch.full((2,), 0.3)
    assert torch.equal(model(x, t, text, mask), model(x, t[:, None].expand(2, 6), text, mask))
    t2 = t[:, None].repeat(1, 6)
    t2[:, 5] = 0.9
    y, y2 = model(x, t, text, mask), model(x, t2, text, mask)
    assert torch.equal(y[:, :, :4], y2[:, :, :4]) and not torch.equal(y[:, :, 4:], y2[:, :, 4:])


@pytest.mark.parametrize("window", [None, 2])
def test_chunked_with_cache_equals_whole(window):
    model = small_dit()
    x, t, text, mask = inputs(T=8)
    whole = model(x, t, text, mask)
    context, outs = [], []
    for c in range(4):
        sl = slice(2 * c, 2 * c + 2)
        v, kv = model.forward_chunk(x[:, :, sl], t[:, sl], text, mask, context)
        outs.append(v)
        context.append(kv)
    assert (torch.cat(outs, 2) - whole).abs().max() < 1e-5
    if window:  # a rolling window equals the whole forward over just those frames
        ctx = context[-window - 1 : -1]
        v, _ = model.forward_chunk(x[:, :, 6:8], t[:, 6:8], text, mask, ctx)
        ref = model(x[:, :, 2:8], t[:, 2:8], text, mask)[:, :, 4:]
        assert (v - ref).abs().max() > 0  # deeper context differs ...
        ctx_fresh = []
        for c in (1, 2):
            _, kv = model.forward_chunk(x[:, :, 2 * c : 2 * c + 2], t[:, 2 * c : 2 * c + 2], text, mask, ctx_fresh)
            ctx_fresh.append(kv)
        v2, _ = model.forward_chunk(x[:, :, 6:8], t[:, 6:8], text, mask, ctx_fresh)
        assert (v2 - ref).abs().max() < 1e-5  # ... and equals the whole forward when built from the window


def test_first_chunk_embedding_marks_only_the_start_of_the_video():
    """model.first_chunk_embed: the video's first chunk is told apart from a later chunk whose context is noise
    (relative RoPE alone cannot), and chunked generation still equals the whole forward."""
    model = small_dit(first_chunk_embed=True)
    x, t, text, mask = inputs(T=8)
    whole = model(x, t, text, mask)
    context, outs = [], []
    for c in range(4):
        v, kv = model.forward_chunk(x[:, :, 2 * c : 2 * c + 2], t[:, 2 * c : 2 * c + 2], text, mask, context, 2 * c)
        outs.append(v)
        context.append(kv)
    assert (torch.cat(outs, 2) - whole).abs().max() < 1e-5
    # the same frames at the start of a video and later (start=2) differ, without context as with it
    first, _ = model.forward_chunk(x[:, :, 2:4], t[:, 2:4], text, mask, [])  # no context: the first chunk
    assert torch.equal(first, model(x[:, :, 2:4], t[:, 2:4], text, mask))
    later = model(x[:, :, 2:4], t[:, 2:4], text, mask, start=2)
    assert (first - later).abs().max() > 1e-4
    # a zero vector is the model without it (fine-tuning an older export starts from the same function)
    plain = small_dit()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "first_chunk"})
    with torch.no_grad():
        model.first_chunk.zero_()
    assert torch.equal(model(x, t, text, mask), plain(x, t, text, mask))


def test_text_refiner_binds_by_order_ignores_padding_and_starts_as_identity():
    """model.text_refiner: without it the DiT sees the text as a set (swapping two tokens changes nothing), with it
    the order counts; padding never changes the result; and a fresh refiner is the identity, so an older export
    gains it without changing what it does."""
    x, t, text, mask = inputs(B=1)
    swapped = text[:, [0, 3, 2, 1, 4, 5, 6]]
    plain = small_dit()
    assert (plain(x, t, swapped, mask) - plain(x, t, text, mask)).abs().max() < 1e-5  # a bag of tokens
    model = small_dit(text_refiner=2)
    with torch.no_grad():
        for block in model.text_refiner:  # sharp attention, so that positions matter
            block.attn.q_norm.weight.fill_(4.0)
            block.attn.k_norm.weight.fill_(4.0)
    assert (model(x, t, swapped, mask) - model(x, t, text, mask)).abs().max() > 1e-3
    padded = torch.cat([text, torch.randn(1, 3, 32)], 1)
    pad_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], 1)
    assert (model(x, t, padded, pad_mask) - model(x, t, text, mask)).abs().max() < 1e-5
    fresh = DiT(DiTConfig(hidden=64, depth=2, heads=4, text_dim=32, chunk_frames=2, text_refiner=1))
    missing, unexpected = fresh.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("text_refiner.") for k in missing)
    with torch.no_grad():
        assert torch.equal(fresh(x, t, text, mask), plain(x, t, text, mask))


def test_bad_latents_are_clear():
    model = small_dit()
    x, t, text, mask = inputs(H=7)
    with pytest.raises(ValueError, match="not divisible"):
        model(x, t, text, mask)
    with pytest.raises(ValueError, match="latent channels"):
        model(torch.randn(1, 3, 2, 8, 8), torch.rand(1), text[:1], mask[:1])


def test_flow_loss_on_a_fixed_batch_falls_tenfold():
    torch.manual_seed(0)
    model = DiT(DiTConfig(hidden=64, depth=2, heads=4, text_dim=32, chunk_frames=2))
    x0 = torch.randn(2, 16, 3, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([[0.3, 0.3, 0.7], [0.6, 0.6, 0.2]])
    text, mask = torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(250):
        loss = flow_loss(lambda xt, tt: model(xt, tt, text, mask), x0, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_dense_temporal_attention_equals_sdpa():
    """The dense (matmul + softmax) temporal kernel is a drop-in for SDPA, block-causal mask included,
    also through the cached chunk-by-chunk path."""
    from videodit.attention import attention, dense_attention

    q, k, v = torch.randn(3, 2, 5, 8), torch.randn(3, 2, 7, 8), torch.randn(3, 2, 7, 8)
    mask = torch.rand(5, 7) > 0.4
    mask[:, 0] = True  # every query sees at least one key
    torch.testing.assert_close(dense_attention(q, k, v, mask), attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense_attention(q, k, v), attention(q, k, v), atol=1e-5, rtol=1e-5)

    torch.manual_seed(0)
    sdpa = small_dit()
    dense = DiT(DiTConfig(hidden=64, depth=2, heads=4, text_dim=32, chunk_frames=2, temporal_attention="dense"))
    dense.load_state_dict(sdpa.state_dict())
    x, t, text, mask = inputs(T=6)
    torch.testing.assert_close(dense(x, t, text, mask), sdpa(x, t, text, mask), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        v1, kv = dense.forward_chunk(x[:, :, :2], t[:, :2], text, mask, [])
        v2, _ = dense.forward_chunk(x[:, :, 2:4], t[:, 2:4], text, mask, [kv])
        w1, kw = sdpa.forward_chunk(x[:, :, :2], t[:, :2], text, mask, [])
        w2, _ = sdpa.forward_chunk(x[:, :, 2:4], t[:, 2:4], text, mask, [kw])
    torch.testing.assert_close(v1, w1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v2, w2, atol=1e-5, rtol=1e-5)


def test_bad_temporal_attention_is_a_config_error():
    from videodit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="temporal_attention"):
        load_config(None, {"model.temporal_attention": "flash"})


def test_regional_compile_keeps_names_and_outputs():
    """train.compile: each block compiled in place; parameter names (checkpoints) and outputs unchanged.
    The eager backend runs the same graph capture on CPU without a C++ compiler."""
    from videodit.train.parallelize import compile_blocks

    model = small_dit()
    x, t, text, mask = inputs()
    ref, names = model(x, t, text, mask), list(model.state_dict())
    assert compile_blocks(model, backend="eager") == 2
    assert list(model.state_dict()) == names
    torch.testing.assert_close(model(x, t, text, mask), ref)


@pytest.mark.parametrize("policy", ["full", "save_matmuls"])
def test_activation_checkpointing_policies_same_gradients_less_recompute(policy):
    """train.checkpoint_policy: both policies give the plain gradients; "full" replays each block's forward,
    matmuls included, while "save_matmuls" keeps the matmul outputs and recomputes only the ops between them."""
    import copy

    from torch.utils._python_dispatch import TorchDispatchMode

    from videodit.train.parallelize import _matmul_ops, apply_activation_checkpointing

    class CountMatmuls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n, self.total, self.ops = 0, 0, _matmul_ops()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func in self.ops
            self.total += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    plain = small_dit().train()
    x, t, text, mask = inputs()
    noise = torch.randn_like(x)

    def grads(model):
        model.zero_grad()
        loss = flow_loss(lambda a, b: model(a, b, text, mask), x, t, noise)
        with CountMatmuls() as counter:
            loss.backward()
        return {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone() for n, p in model.named_parameters()}, \
            (counter.n, counter.total)

    ref, n_plain = grads(plain)
    ckpt = copy.deepcopy(plain)
    apply_activation_checkpointing(ckpt, policy)
    got, n_ckpt = grads(ckpt)
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-4)
    assert n_ckpt[1] > n_plain[1]  # both recompute part of the forward in the backward
    if policy == "full":
        assert n_ckpt[0] > n_plain[0]  # the block's matmuls run again
    else:
        assert n_ckpt[0] == n_plain[0]  # no matmul runs again: only element-wise ops are recomputed
    with pytest.raises(ValueError, match="checkpoint policy"):
        apply_activation_checkpointing(copy.deepcopy(plain), "none")
    from videodit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="checkpoint_policy"):
        load_config(None, {"train.checkpoint_policy": "none"})


def test_bf16_weights_take_fp32_inputs():
    """DeepSpeed's bf16 engine holds bf16 weights and passes our fp32 latents and text through unchanged
    (a CUDA run failed on exactly this): the models cast inputs to their weights' dtype."""
    from videodit.config import VAEConfig
    from videodit.vae import VideoVAE

    model = small_dit()
    x, t, text, mask = inputs()
    ref = model(x, t, text, mask)
    low = model.to(torch.bfloat16)(x, t, text, mask)
    assert low.dtype == torch.bfloat16
    assert float((low.float() - ref).norm() / ref.norm()) < 0.05
    vae = VideoVAE(VAEConfig()).to(torch.bfloat16)
    recon, mean, _ = vae(torch.rand(1, 3, 5, 16, 16) * 2 - 1)
    assert recon.dtype == torch.bfloat16 and torch.isfinite(recon.float()).all()
