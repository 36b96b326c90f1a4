"""LoRA adapters (videodit/lora.py): a fresh adapter and scale 0 are the base exactly, merging equals the adapter on
the fly, only the adapter trains, the format round-trips, LoRA training resumes exactly and is the same on 2 ZeRO-2
processes as on 1, and a wrong base or a damaged file is a clear error."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videodit import lora
from videodit.checkpoint import load_state, save_module, write_config
from videodit.config import Config, load_config
from videodit.dit import DiT
from videodit.generate import Pipeline
from videodit.train.distributed import Dist
from videodit.train.trainer import Trainer
from videodit.vae import VideoVAE

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints" / "tiny"


def tiny_dit(seed: int = 0) -> DiT:
    """A small DiT with every weight random (the zero-initialised gates and output would hide any adapter)."""
    torch.manual_seed(seed)
    dit = DiT(load_config(None, ["--model.hidden=64", "--model.depth=2"]).model)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.05)
    return dit.eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 16, 3, 4, 4, generator=g), torch.rand(2, 3, generator=g)
    return x, t, torch.randn(2, 5, 64, generator=g), torch.ones(2, 5, dtype=torch.bool)


def randomise_adapter(dit: DiT) -> None:
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)


def adapter_of(dit: DiT, base_hash: str, rank: int = 4, alpha: float = 8.0) -> lora.Adapter:
    tensors = {k: v.detach().clone() for k, v in lora.adapter_state(dit).items()}
    return lora.Adapter(rank, alpha, lora.DEFAULT_TARGETS, base_hash, dit.cfg.hidden, dit.cfg.depth, tensors)


def test_zero_init_lora_equals_the_base():
    base = tiny_dit()
    adapted = tiny_dit()
    n = lora.apply(adapted, rank=4, alpha=8.0)
    assert n == sum(v.numel() for v in lora.adapter_state(adapted).values()) > 0
    with torch.no_grad():
        assert torch.equal(adapted(*inputs()), base(*inputs()))


def test_merge_equals_on_the_fly_and_scale_zero_is_the_base_exactly():
    base = tiny_dit()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    h = lora.weights_hash(state)
    adapted = tiny_dit()
    lora.apply(adapted, rank=4, alpha=8.0)
    randomise_adapter(adapted)
    adapter = adapter_of(adapted, h)
    with torch.no_grad():
        on_the_fly = adapted(*inputs())
        merged = tiny_dit()
        lora.merge(merged, adapter, 1.0, h)
        assert (merged(*inputs()) - on_the_fly).abs().max() <= 1e-5
        assert (on_the_fly - base(*inputs())).abs().max() > 1e-3  # the adapter does change the output
        zero = tiny_dit()
        lora.merge(zero, adapter, 0.0, h)
        assert all(torch.equal(zero.state_dict()[k], state[k]) for k in state)
        assert torch.equal(zero(*inputs()), base(*inputs()))
        twice = tiny_dit()  # two adapters add up: the same one at 0.5 twice is it at 1
        lora.merge(twice, adapter, 0.5, h)
        lora.merge(twice, adapter, 0.5, h)
        assert (twice(*inputs()) - on_the_fly).abs().max() <= 1e-5


def test_only_adapter_parameters_receive_gradients():
    dit = tiny_dit()
    lora.apply(dit, rank=4, alpha=8.0, targets=("attn_s.qkv", "mlp.0"))
    dit(*inputs()).square().mean().backward()
    for name, p in dit.named_parameters():
        if "lora_" in name:  # with B at zero, A's gradient is zero too until B has moved (as in LoRA)
            assert p.requires_grad and p.grad is not None, name
            assert name.endswith("lora_A") or p.grad.abs().max() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    with pytest.raises(lora.LoRAError, match="not a linear layer.*attn_s.qkv"):
        lora.apply(tiny_dit(), rank=4, alpha=8.0, targets=("attn_s.qkvx",))


def test_save_load_round_trip(tmp_path):
    dit = tiny_dit()
    lora.apply(dit, rank=4, alpha=8.0)
    randomise_adapter(dit)
    adapter = adapter_of(dit, "0123456789abcdef")
    lora.save_adapter(adapter, tmp_path / "a")
    for path in (tmp_path / "a", tmp_path / "a" / lora.ADAPTER_FILE):
        back = lora.load_adapter(path)
        assert back.meta() == adapter.meta()
        assert back.tensors.keys() == adapter.tensors.keys()
        assert all(torch.equal(back.tensors[k], adapter.tensors[k]) for k in adapter.tensors)
    assert lora.parse_lora("runs/x/export:0.5") == ("runs/x/export", 0.5)
    assert lora.parse_lora("runs/x/export") == ("runs/x/export", 1.0)
    assert lora.parse_lora("C:dir") == ("C:dir", 1.0)


def test_mismatched_base_and_corrupt_file_are_clear_errors(tmp_path):
    dit = tiny_dit()
    lora.apply(dit, rank=4, alpha=8.0)
    h = lora.weights_hash(tiny_dit().state_dict())
    other = lora.weights_hash(tiny_dit(seed=1).state_dict())
    assert h != other
    adapter = adapter_of(dit, other)
    with pytest.raises(lora.LoRAError, match="trained on another base model"):
        lora.merge(tiny_dit(), adapter, 1.0, h)
    wide = DiT(load_config(None, ["--model.hidden=96", "--model.depth=2"]).model)
    with pytest.raises(lora.LoRAError, match="width 64 and depth 2"):
        lora.merge(wide, adapter, 1.0, h)
    folder = lora.save_adapter(adapter, tmp_path / "a")
    data = (folder / lora.ADAPTER_FILE).read_bytes()
    (folder / lora.ADAPTER_FILE).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(lora.LoRAError, match="damaged.*re-export"):
        lora.load_adapter(folder)
    (folder / lora.ADAPTER_FILE).write_bytes(b"\x00" * 64)  # garbage
    with pytest.raises(lora.LoRAError, match="damaged"):
        lora.load_adapter(folder)
    (folder / lora.ADAPTER_CONFIG).write_text("rank: [")
    with pytest.raises(lora.LoRAError, match="not a readable adapter config"):
        lora.load_adapter(folder)
    with pytest.raises(lora.LoRAError, match="not found"):
        lora.load_adapter(tmp_path / "nothing")


def test_shipped_checkpoint_with_an_adapter_scale_zero_merge_cli(tmp_path):
    """Pipeline.load(loras=...) over the shipped model: scale 0 is its DiT bit for bit, scale 1 is the adapter on the
    fly, `python -m videodit.lora merge` writes the same weights, another base's adapter is refused."""
    state = load_state(SHIPPED / "dit.safetensors")
    h = lora.weights_hash(state)
    cfg = load_config(SHIPPED / "config.yaml")
    adapted = DiT(cfg.model).eval()
    adapted.load_state_dict(state)
    lora.apply(adapted, rank=2, alpha=2.0, targets=("attn_s.qkv", "mlp.2"))
    randomise_adapter(adapted)
    tensors = {k: v.detach().clone() for k, v in lora.adapter_state(adapted).items()}
    folder = lora.save_adapter(lora.Adapter(2, 2.0, ("attn_s.qkv", "mlp.2"), h, 192, 8, tensors), tmp_path / "a")
    base = Pipeline.load(SHIPPED)
    zero = Pipeline.load(SHIPPED, loras=[(folder, 0.0)])
    assert zero.cfg.sample.expert_t == 0  # the adapted main DiT does every step
    assert all(torch.equal(v, base.dit.state_dict()[k]) for k, v in zero.dit.state_dict().items())
    one = Pipeline.load(SHIPPED, loras=[(folder, 1.0)])
    x, t = torch.randn(1, 16, 4, 8, 8), torch.rand(1, 4)
    text, mask = torch.randn(1, 5, 64), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        assert (one.dit(x, t, text, mask) - adapted(x, t, text, mask)).abs().max() <= 1e-5
    r = subprocess.run([sys.executable, "-m", "videodit.lora", "merge", "--checkpoint", str(SHIPPED), "--lora",
                        f"{folder}:1", "--out", str(tmp_path / "merged")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merged = load_file(tmp_path / "merged" / "dit.safetensors")
    assert max((merged[k] - v).abs().max().item() for k, v in one.dit.state_dict().items()) == 0
    assert load_config(tmp_path / "merged" / "config.yaml").sample.expert_t == 0
    other = lora.save_adapter(lora.Adapter(2, 2.0, ("attn_s.qkv", "mlp.2"), "f" * 16, 192, 8, tensors), tmp_path / "b")
    with pytest.raises(lora.LoRAError, match="another base model"):
        Pipeline.load(SHIPPED, loras=[(other, 1.0)])


@pytest.mark.parametrize("arg, needle", [("/nonexistent/adapter", "not found"),
                                         ("{bad}", "was trained on a DiT of width 64")])
def test_sample_cli_bad_lora_is_one_line_exit_2(tmp_path, arg, needle):
    dit = tiny_dit()
    lora.apply(dit, rank=2, alpha=2.0)
    lora.save_adapter(adapter_of(dit, "0" * 16, rank=2, alpha=2.0), tmp_path / "bad")
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--prompt", "a red circle moving up", "--seconds",
                        "1", "--lora", arg.format(bad=tmp_path / "bad"), "--out", str(tmp_path / "v.mp4")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert not (tmp_path / "v.mp4").exists()


# ---- training


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    """A VAE + a random-weights small DiT in one folder: the train.vae and train.init of a LoRA run."""
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    cfg = load_config(None, ["--model.hidden=64", "--model.depth=2"])
    save_module(VideoVAE(Config().vae), folder / "vae.safetensors")
    save_module(tiny_dit(), folder / "dit.safetensors")
    write_config(cfg, folder)
    return folder


def lora_args(base: Path, out: Path, steps: int = 4, **extra) -> list[str]:
    args = {
        "train.task": "dit", "train.vae": str(base), "train.init": str(base), "train.out_dir": str(out),
        "train.steps": steps, "train.wandb": "disabled", "train.lr": 1e-2, "train.warmup_steps": 1,
        "train.log_every": 100, "train.ckpt_every": 2, "train.ema_decay": 0.0, "train.lora_rank": 4,
        "data.source": "shapes", "data.num_clips": 8, "data.frames": 5, "data.size": 32, "data.batch_size": 4,
        "model.hidden": 64, "model.depth": 2, "model.text_refiner": 0, "model.first_chunk_embed": False,
        **extra,
    }
    return [f"--{k}={v}" for k, v in args.items()]


def trainer(args: list[str], resume: str = "") -> Trainer:
    return Trainer(load_config(None, args), resume, Dist())


def test_lora_training_trains_only_the_adapter_and_resumes_exactly(base_ckpt, tmp_path):
    whole = trainer(lora_args(base_ckpt, tmp_path / "a"))
    frozen = {k: v.clone() for k, v in whole.module.state_dict().items() if "lora_" not in k}
    whole.fit()
    assert all(torch.equal(whole.module.state_dict()[k], v) for k, v in frozen.items())
    saved = load_file(tmp_path / "a" / "checkpoints" / "step_0000004" / "model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # the base is not saved again
    part = trainer(lora_args(base_ckpt, tmp_path / "b"))
    part.fit(stop_after=2)
    resumed = trainer(lora_args(base_ckpt, tmp_path / "b"), resume="auto")
    assert resumed.start_step == 2
    resumed.fit()
    la, lb = dict(whole.losses), dict(resumed.losses)
    assert la.keys() == lb.keys() == set(range(4)) and max(abs(la[k] - lb[k]) for k in la) <= 1e-6
    export = whole.export()
    adapter = lora.load_adapter(export)
    assert adapter.base_hash == lora.weights_hash(load_state(base_ckpt / "dit.safetensors"))
    mine = {k.removeprefix("dit."): v for k, v in whole.module.state_dict().items() if "lora_" in k}
    b = lora.load_adapter(resumed.export())
    assert max((adapter.tensors[k] - mine[k]).abs().max().item() for k in mine) == 0  # EMA decay 0: the weights
    assert max((b.tensors[k] - mine[k]).abs().max().item() for k in mine) <= 1e-6
    assert any(v.abs().max() > 0 for k, v in mine.items() if k.endswith("lora_B"))  # it did learn


def test_lora_zero2_on_two_processes_equals_one(base_ckpt, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the [train] extra")
    ref = trainer(lora_args(base_ckpt, tmp_path / "one", steps=3, **{"train.lr": 1e-3}))
    ref.fit()
    port = str(29500 + (os.getpid() + 7) % 2000)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                        str(ROOT / "train.py"), *lora_args(base_ckpt, tmp_path / "ds", steps=3,
                                                           **{"train.zero_stage": 2, "train.lr": 1e-3})],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    exported = lora.load_adapter(tmp_path / "ds" / "export").tensors
    mine = {k.removeprefix("dit."): v for k, v in ref.module.state_dict().items() if "lora_" in k}
    assert exported.keys() == mine.keys()
    assert max((exported[k] - mine[k]).abs().max().item() for k in mine) <= 1e-6
    ds = tmp_path / "ds" / "checkpoints" / "step_0000002" / "ds"
    size = sum(f.stat().st_size for f in ds.rglob("*") if f.is_file())
    assert size < 4 * sum(v.numel() * 4 for v in mine.values()) + 200_000  # adapter + its optimizer state only
