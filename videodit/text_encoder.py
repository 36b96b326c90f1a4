"""Frozen T5 text encoder (Raffel et al. 2020; Imagen showed a large frozen T5 is what prompt-following needs).

`TextEncoder` wraps transformers' `T5EncoderModel` and its tokenizer: any T5 / T5 v1.1 / umT5 / ByT5 encoder
loads from a local folder (or a hub id where the user has a network). With no pretrained path it builds a
tiny T5 from a small `T5Config` with the byte-level ByT5 tokenizer, which needs no vocabulary file, so the
whole pipeline runs offline; those weights are saved inside the checkpoint.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from videodit.config import TextConfig

BYT5_VOCAB = 384  # 256 bytes + 3 special tokens, rounded up as in ByT5


def word_tokenizer():
    """A word-level tokenizer over the shapes caption language (`shapes.vocabulary`), built offline with the
    `tokenizers` library: lower-cased words and punctuation marks, <unk> for any other word, </s> appended, T5's
    special ids (<pad> 0, </s> 1, <unk> 2). Saved with the model (tokenizer.json), so it loads like any other."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from videodit.data.shapes import vocabulary

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # the same split as shapes.split_words: runs of letters/digits, and every other non-space character alone
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits()]
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @classmethod
    def tiny(cls, cfg: TextConfig, seed: int = 0) -> TextEncoder:
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

        tokenizer = word_tokenizer() if cfg.tiny_tokenizer == "words" else ByT5Tokenizer()
        t5cfg = T5Config(
            vocab_size=len(tokenizer) if cfg.tiny_tokenizer == "words" else BYT5_VOCAB,
            d_model=cfg.tiny_d_model,
            d_kv=cfg.tiny_d_model // cfg.tiny_heads,
            d_ff=cfg.tiny_d_ff,
            num_layers=cfg.tiny_layers,
            num_heads=cfg.tiny_heads,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = T5EncoderModel(t5cfg)
        return cls(model, tokenizer, cfg.max_length)

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int) -> TextEncoder:
        from transformers import AutoTokenizer, ByT5Tokenizer, T5EncoderModel

        path = str(path)
        try:
            model = T5EncoderModel.from_pretrained(path)
        except OSError as e:
            raise FileNotFoundError(
                f"could not load a T5 encoder from '{path}': give a local folder made by save_pretrained "
                f"(config.json + weights) or a hub id with network access ({e})"
            ) from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError):
            if model.config.vocab_size != BYT5_VOCAB:
                raise FileNotFoundError(f"no tokenizer files in '{path}' and the model is not byte-level") from None
            tokenizer = ByT5Tokenizer()
        return cls(model, tokenizer, max_length)

    @classmethod
    def from_config(cls, cfg: TextConfig) -> TextEncoder:
        return cls.from_pretrained(cfg.pretrained, cfg.max_length) if cfg.pretrained else cls.tiny(cfg)

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        full = self.tokenizer(list(prompts), padding=True, truncation=False, return_tensors="pt")
        if full.input_ids.shape[1] > self.max_length:
            long = [p for p, n in zip(prompts, full.attention_mask.sum(1).tolist()) if n > self.max_length]
            warnings.warn(
                f"{len(long)} prompt(s) exceed text.max_length={self.max_length} tokens and were truncated: "
                f"{long[0][:60]!r}...",
                stacklevel=3,
            )
        enc = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return enc.input_ids, enc.attention_mask.bool()

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (emb (B, L, D), mask (B, L) bool). An empty prompt is the unconditional one."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        emb = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, D)
        return emb * mask[..., None], mask


def main(argv: list[str] | None = None) -> int:
    """python -m videodit.text_encoder OUT [--tokenizer words]: save the tiny built-in T5 as a T5 folder, for
    `--text.pretrained OUT` in training and `--text-encoder OUT` in `videodit-data cache`."""
    import argparse
    import sys

    from videodit.checkpoint import save_text_encoder

    ap = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    ap.add_argument("out", help="folder to create; the encoder lands in OUT/text_encoder")
    ap.add_argument("--tokenizer", choices=["byte", "words"], default="words")
    ap.add_argument("--d-model", type=int, default=TextConfig.tiny_d_model)
    ap.add_argument("--layers", type=int, default=TextConfig.tiny_layers)
    ap.add_argument("--heads", type=int, default=TextConfig.tiny_heads)
    ap.add_argument("--d-ff", type=int, default=TextConfig.tiny_d_ff)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = TextConfig(tiny_d_model=args.d_model, tiny_layers=args.layers, tiny_heads=args.heads,
                     tiny_d_ff=args.d_ff, tiny_tokenizer=args.tokenizer)
    if args.d_model % args.heads:
        print(f"error: --d-model ({args.d_model}) must be divisible by --heads ({args.heads})", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_text_encoder(TextEncoder.tiny(cfg, seed=args.seed), out)
    except OSError as e:
        print(f"error: cannot write '{out}': {e}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'text_encoder'} ({args.tokenizer} tokenizer, d_model {args.d_model}); "
          f"use --text.pretrained {out / 'text_encoder'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
