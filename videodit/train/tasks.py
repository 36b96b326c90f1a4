"""What a training step computes: the DiT's rectified-flow loss or the VAE's reconstruction loss, each network
wrapped with its loss so DeepSpeed sees one module; what a task exports."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from videodit.checkpoint import (
    CheckpointError,
    atomic_save_state,
    load_state,
    load_text_encoder,
    load_vae,
    read_config,
    save_text_encoder,
)
from videodit.config import Config, ConfigError, VAEConfig, override, to_dict
from videodit.data.datasets import collate
from videodit.dit import DiT
from videodit.flow import anchor_gap_index, flow_loss, sample_t, take_frames
from videodit.lora import weights_hash
from videodit.train import TrainError
from videodit.train.batches import step_generator
from videodit.vae import normalize_latents


class DiTLoss(nn.Module):
    def __init__(self, dit: DiT, detail_weight: float = 0.0):
        super().__init__()
        self.dit = dit
        self.detail_weight = detail_weight

    def forward(self, x0: Tensor, noise: Tensor, t: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        return flow_loss(lambda xt, tt: self.dit(xt, tt, text, text_mask), x0, t, noise, self.detail_weight)


class VAELoss(nn.Module):
    def __init__(self, vae: nn.Module, cfg: Config):
        super().__init__()
        self.vae = vae
        self.cfg = cfg

    def forward(self, video: Tensor, step: Tensor) -> Tensor:
        from videodit.vae_loss import vae_loss

        loss, _ = vae_loss(self.vae, video, self.cfg.vae, int(step.item()))
        return loss


class DiTTask:
    """Turns a global batch into the per-rank inputs of DiTLoss: latents, noise, t and text, all from (seed, step)."""

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.text_encoder = load_text_encoder_for(cfg).to(device)
        if cfg.data.source == "shards":  # first: a wrong encoder is the likelier cause of a width mismatch
            check_shards_text(cfg, self.text_encoder)
        if cfg.model.text_dim != self.text_encoder.dim:
            raise TrainError(f"model.text_dim ({cfg.model.text_dim}) must equal the text encoder's width "
                             f"({self.text_encoder.dim}); set --model.text_dim {self.text_encoder.dim}")
        self.vae = None
        if cfg.train.vae:  # the run (and its export) records the VAE it was trained with, pixel_mean and all
            try:
                cfg.vae = read_config(cfg.train.vae).vae
            except (CheckpointError, ConfigError) as e:
                raise TrainError(f"train.vae: {e}") from e
        if cfg.data.source == "shards":
            use_shards_vae(cfg)
        else:
            if not cfg.train.vae:
                raise TrainError("training the DiT on clips needs a trained VAE: set train.vae to its checkpoint "
                                 "folder (train one with configs/vae_tiny.yaml), or train on cached shards")
            try:
                self.vae = load_vae(cfg.train.vae, cfg).to(device).requires_grad_(False)  # cfg.vae is its own
            except (CheckpointError, ConfigError) as e:
                raise TrainError(str(e)) from e
            if self.vae.cfg.latent_channels != cfg.model.in_channels:
                raise TrainError(f"model.in_channels ({cfg.model.in_channels}) must equal the VAE's latent channels "
                                 f"({self.vae.cfg.latent_channels})")
        self.null_emb, self.null_mask = self.text_encoder([""])
        self.base_hash = ""  # of train.init's DiT weights, set by model()

    def model(self) -> nn.Module:
        dit = DiT(self.cfg.model)
        if self.cfg.train.init:
            state = load_init(self.cfg.train.init, "dit.safetensors")
            self.base_hash = weights_hash(state)  # a LoRA names its base by this
            missing, unexpected = dit.load_state_dict(state, strict=False)
            # an export from before model.first_chunk_embed or model.text_refiner starts with the new vector at
            # zero and the refiner as the identity: the same model
            new = {k for k in missing if k == "first_chunk" or k.startswith("text_refiner.")}
            if unexpected or set(missing) - new:
                raise TrainError(f"train.init: '{self.cfg.train.init}' does not match this model (missing "
                                 f"{missing[:3]}, unexpected {unexpected[:3]}); give an export of the same config")
        return DiTLoss(dit, self.cfg.flow.detail_weight)

    @torch.no_grad()
    def latents(self, batch: dict) -> Tensor:
        if "latents" in batch:
            z = batch["latents"].to(self.device)
        else:
            from videodit.vae import encode_video

            z = encode_video(self.vae, batch["video"].to(self.device))
        f = self.cfg.flow
        return (normalize_latents(z, self.cfg.vae) - f.latent_shift) * f.latent_scale

    def estimate_latent_stats(self, dataset) -> None:
        """Unit-variance latents (as SD's scale factor): measured once on a few clips, stored in the config."""
        f = self.cfg.flow
        if f.latent_scale > 0:
            return
        f.latent_scale, f.latent_shift = 1.0, 0.0
        if self.cfg.vae.latent_mean:  # the VAE normalises its latents per channel (Wan 2.1's statistics)
            return
        # one clip at a time: the first clips may differ in shape (buckets of lengths or aspect ratios)
        z = torch.cat([self.latents(collate([dataset[i]])).flatten() for i in range(min(len(dataset), 16))])
        f.latent_shift = float(z.mean())
        f.latent_scale = float(1.0 / z.std().clamp_min(1e-6))

    def inputs(self, batch: dict, step: int, sl: slice) -> dict:
        """Per-rank model inputs for the global batch `batch` (its rows `sl` belong to this rank)."""
        cfg = self.cfg
        B = len(batch["caption"])
        g = step_generator(cfg.train.seed, step, 1)
        drop = torch.rand(B, generator=g) < cfg.flow.text_dropout
        x0 = self.latents({k: (v[sl] if isinstance(v, (Tensor, list)) else v) for k, v in batch.items()})
        gapped = None
        if cfg.flow.anchor_gap_prob > 0:  # load_config: needs per_chunk_t
            keep = cfg.sample.window_chunks + 1  # the recent chunks of the cache and the one being made
            index = anchor_gap_index(B, x0.shape[2], cfg.model.chunk_frames, keep, cfg.flow.anchor_gap_prob, g)
            if index is not None:
                x0 = take_frames(x0, index[sl])
                gapped = index[:, cfg.model.chunk_frames] > cfg.model.chunk_frames
        shape = (B, *x0.shape[1:])
        noise = torch.randn(shape, generator=g)[sl]
        _, C, T, H, W = shape
        pt, ph, pw = cfg.model.patch
        tokens = (T // pt) * (H // ph) * (W // pw)
        t = sample_t(B, T, cfg.model.chunk_frames, tokens, cfg.flow, g)[sl]
        if gapped is not None:
            # the chunk after the gap is only ever context, as in sampling (clean, no loss): a loss on it would
            # teach that the chunk after the first may jump, which sampling's second chunk must not
            context = gapped[sl, None] & (torch.arange(T) < 2 * cfg.model.chunk_frames)
            t = t.masked_fill(context, 0.0)
        if "text_emb" in batch:
            emb, mask = batch["text_emb"][sl], batch["text_mask"][sl].bool()
        else:
            emb, mask = self.text_encoder(batch["caption"][sl])
        emb, mask = emb.to(self.device), mask.to(self.device)
        # text dropout: swap in the empty prompt's embedding, padded to the batch's length
        d = drop[sl].to(self.device)
        L = max(emb.shape[1], self.null_emb.shape[1])
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], L - emb.shape[1], emb.shape[2])], 1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], L - mask.shape[1])], 1)
        null = torch.cat([self.null_emb, self.null_emb.new_zeros(1, L - self.null_emb.shape[1], emb.shape[2])], 1)
        nmask = torch.cat([self.null_mask, self.null_mask.new_zeros(1, L - self.null_mask.shape[1])], 1)
        emb = torch.where(d[:, None, None], null.to(emb), emb)
        mask = torch.where(d[:, None], nmask.to(mask), mask)
        return dict(x0=x0, noise=noise.to(self.device), t=t.to(self.device), text=emb, text_mask=mask)

    def export(self, module: nn.Module, folder: Path) -> None:
        atomic_save_state(module.dit.state_dict(), folder / "dit.safetensors")
        if self.cfg.train.vae:  # also when training on shards: the export must decode what the DiT makes
            shutil.copyfile(Path(self.cfg.train.vae) / "vae.safetensors", folder / ".vae.tmp")
            os.replace(folder / ".vae.tmp", folder / "vae.safetensors")
        save_text_encoder(self.text_encoder, folder)


class VAETask:
    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device

    def model(self) -> nn.Module:
        from videodit.vae_wan import build_vae

        vae = build_vae(self.cfg.vae)
        if self.cfg.train.init:
            vae.load_state_dict(load_init(self.cfg.train.init, "vae.safetensors"))
        if self.cfg.vae.freeze_encoder:
            vae.encoder.requires_grad_(False)
        return VAELoss(vae, self.cfg)

    def estimate_latent_stats(self, dataset) -> None:
        pass

    def inputs(self, batch: dict, step: int, sl: slice) -> dict:
        video = batch["video"]  # (B, 3, T, H, W)
        c = self.cfg.data.crop
        if c:  # the VAE is convolutional: crops teach it the same thing for a fraction of the compute
            g = step_generator(self.cfg.train.seed, step, 2)
            B, _, _, H, W = video.shape
            ys = torch.randint(0, H - c + 1, (B,), generator=g).tolist()
            xs = torch.randint(0, W - c + 1, (B,), generator=g).tolist()
            video = torch.stack([v[:, :, y : y + c, x : x + c] for v, y, x in zip(video, ys, xs)])
        return dict(video=video[sl].to(self.device), step=torch.tensor(step))

    def export(self, module: nn.Module, folder: Path) -> None:
        atomic_save_state(module.vae.state_dict(), folder / "vae.safetensors")
        # the tiny T5 the DiT stage will use, so that this folder is all that `videodit-data cache --vae` and
        # `train.vae` need, and shards and the DiT see the same embeddings. A text.pretrained T5 is not copied:
        # checkpoint.load_text_encoder finds it again by the name in config.yaml.
        if not self.cfg.text.pretrained:
            save_text_encoder(load_text_encoder_for(self.cfg), folder)


def load_init(folder: str, name: str) -> dict[str, Tensor]:
    path = Path(folder) / name
    if not path.is_file():
        raise TrainError(f"train.init: '{path}' not found; give an export folder of the same task")
    return load_state(path)


def text_encoder_source(cfg: Config) -> str:
    """Which text encoder a run uses, in words: text.pretrained if set; else the one in the train.vae checkpoint
    (this project's VAE exports carry one); else the tiny built-in T5. Cached shards must have been made with it."""
    if cfg.text.pretrained:
        return f"text.pretrained '{cfg.text.pretrained}'"
    if cfg.train.vae and (Path(cfg.train.vae) / "text_encoder").is_dir():
        return f"train.vae's '{Path(cfg.train.vae) / 'text_encoder'}'"
    return "the tiny built-in T5 (text.pretrained unset)"


def _arch(folder: str) -> str:
    try:
        return read_config(folder).vae.arch
    except CheckpointError:
        return ""  # DiTTask reports an unreadable train.vae


def load_text_encoder_for(cfg: Config):
    from videodit.text_encoder import TextEncoder

    # an explicit text.pretrained wins; else the one that came with the VAE checkpoint; else the tiny built-in
    if not cfg.text.pretrained and cfg.train.vae and (Path(cfg.train.vae) / "text_encoder").is_dir():
        return load_text_encoder(cfg.train.vae)
    if not cfg.text.pretrained and cfg.train.vae and _arch(cfg.train.vae) == "wan21":
        # a converted pretrained VAE comes without a text encoder; a random tiny T5 beside it is rarely meant
        print(f"warning: train.vae '{cfg.train.vae}' holds no text encoder and text.pretrained is unset: the tiny "
              f"built-in T5 (random) encodes the captions; for real captions pass --text.pretrained DIR (a T5 / umT5 "
              f"folder; on shards: the --text-encoder they were cached with)", file=sys.stderr)
    from videodit.data.shapes import vocabulary  # the word tokenizer's caption language: the shapes dataset's

    return TextEncoder.from_config(cfg.text, words=vocabulary() if cfg.text.tiny_tokenizer == "words" else None)


# The VAE config keys that say what a latent means: shards made by one VAE train only under a VAE that agrees.
LATENT_KEYS = ("arch", "latent_channels", "pixel_mean", "latent_mean", "latent_std")


def use_shards_vae(cfg: Config) -> None:
    """The VAE the shards were cached with (index.json's vae_config: architecture, per-channel latent statistics)
    decides how their raw latents are normalised: without train.vae the run adopts it, with train.vae the two must
    agree. Shards cached before the index recorded it are taken on trust."""
    from videodit.data.datasets import shard_sources

    made = [s for s in shard_sources(cfg.data.shards) if s["vae_config"]]
    if not made:
        if not cfg.train.vae:
            print("warning: no train.vae: the export will hold no VAE, and sample.py needs one", file=sys.stderr)
        return
    first = made[0]
    for other in made[1:]:
        if diff := [k for k in LATENT_KEYS if other["vae_config"].get(k) != first["vae_config"].get(k)]:
            raise TrainError(f"data.shards mixes the latents of two VAEs: '{first['folder']}' (cached with "
                             f"'{first['vae']}') and '{other['folder']}' (with '{other['vae']}') differ in "
                             f"vae.{', vae.'.join(diff)}; cache them all with one --vae")
    if not cfg.train.vae:
        try:
            vae = override(VAEConfig(), first["vae_config"], "vae.")
        except ConfigError as e:
            raise TrainError(f"data.shards '{first['folder']}': its index.json has an unreadable vae_config ({e}); "
                             f"pass --train.vae {first['vae']}") from e
        vae.freeze_encoder = False  # a setting of the VAE's own training run, not of its latents
        cfg.vae = vae
        print(f"warning: no train.vae: the export will hold no VAE, and sample.py needs one (pass --train.vae "
              f"{first['vae']}, the VAE the shards were cached with, whose config this run uses)", file=sys.stderr)
        return
    ours = to_dict(cfg.vae)
    if diff := [k for k in LATENT_KEYS if ours[k] != first["vae_config"].get(k)]:
        raise TrainError(f"train.vae '{cfg.train.vae}' is not the VAE the shards in '{first['folder']}' were cached "
                         f"with ('{first['vae']}'): vae.{', vae.'.join(diff)} differ; pass --train.vae "
                         f"{first['vae']}, or cache the shards again with --vae {cfg.train.vae}")


@torch.no_grad()
def check_shards_text(cfg: Config, text_encoder) -> None:
    """The shards' caption embeddings must be this run's text encoder's: the DiT learns from them, while text
    dropout's empty prompt, sample videos and sample.py use the encoder itself. Each folder's shortest caption of
    its first shard is encoded again and compared (a loose tolerance: shards may be stored in bf16)."""
    from videodit.data.datasets import ShardDataset, shard_sources

    for src in shard_sources(cfg.data.shards):
        ds = ShardDataset(src["folder"])
        first = [i for i, (shard, _) in enumerate(ds.items) if shard == 0]
        item = ds[min(first, key=lambda i: len(ds.captions[i]))]
        emb, mask = text_encoder([item["caption"]])  # (1, L, D), (1, L)
        got = emb[0, : int(mask[0].sum())].float().cpu()  # (n, D)
        want = item["text_emb"]
        if got.shape != want.shape:
            how = f"has shape {tuple(got.shape)}, the shards' {tuple(want.shape)}"
        else:
            rel = float((got - want).abs().mean() / want.abs().mean().clamp_min(1e-12))
            if rel <= 0.05:
                continue
            how = f"differs from the shards' by {rel:.0%} (mean absolute difference / mean absolute value)"
        made = src["text_encoder"]
        if made and (Path(made) / "text_encoder").is_dir() and not (Path(made) / "config.json").is_file():
            made = str(Path(made) / "text_encoder")  # a videodit checkpoint: its T5 folder
        raise TrainError(f"the shards in '{src['folder']}' were not cached with this run's text encoder "
                         f"({text_encoder_source(cfg)}): its embedding of their caption '{item['caption'][:40]}' "
                         f"{how}; pass --text.pretrained "
                         + (f"{made}, the encoder they were cached with" if made else "DIR, the --text-encoder they "
                            "were cached with"))
