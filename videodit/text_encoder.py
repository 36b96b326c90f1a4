"""Frozen T5 text encoder (Raffel et al. 2020; Imagen showed a large frozen T5 is what prompt-following needs).

`TextEncoder` wraps a transformers T5-family encoder and its tokenizer: a T5 / T5 v1.1 / ByT5, mT5 or umT5 encoder
loads from a local folder (or a hub id where the user has a network) as the class its own config names. With no
pretrained path it builds a tiny T5 from a small `T5Config` with the byte-level ByT5 tokenizer, which needs no
vocabulary file, so the whole pipeline runs offline; those weights are saved inside the checkpoint.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from videodit.config import TextConfig

BYT5_VOCAB = 384  # 256 bytes + 3 special tokens, rounded up as in ByT5


def word_tokenizer(words: list[str]):
    """A word-level tokenizer over `words` (a caption language, e.g. the shapes dataset's `vocabulary()`), built
    offline with the `tokenizers` library: lower-cased words and punctuation marks, <unk> for any other word, </s>
    appended, T5's special ids (<pad> 0, </s> 1, <unk> 2). Saved with the model (tokenizer.json), so it loads like
    any other and the vocabulary travels with the checkpoint."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # the same split as shapes.split_words: runs of letters/digits, and every other non-space character alone
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits()]
    )
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# The encoder class each config's model_type needs. umT5 (Wan's text encoder) keeps a relative-position bias in every
# layer where T5 has one in the first only: built as T5 it would load with all but one bias dropped.
ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


def encoder_class(model_type: str):
    import transformers

    return getattr(transformers, ENCODERS[model_type])


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
    def tiny(cls, cfg: TextConfig, seed: int = 0, words: list[str] | None = None) -> TextEncoder:
        """The tiny built-in T5 (random, seeded). text.tiny_tokenizer "words" needs the caption language `words`."""
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

        if cfg.tiny_tokenizer == "words" and not words:
            raise ValueError("text.tiny_tokenizer 'words' needs the vocabulary: TextEncoder.tiny(cfg, words=[...])")
        tokenizer = word_tokenizer(words) if cfg.tiny_tokenizer == "words" else ByT5Tokenizer()
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
        from transformers import AutoConfig, AutoTokenizer, ByT5Tokenizer
        from transformers.utils import logging as hf_logging

        path = str(path)
        hf_logging.disable_progress_bar()  # a bar per load would bury the one line a CLI prints
        local = Path(path)
        if local.is_dir() and not list(local.glob("*.safetensors")):
            pickled = sorted(p.name for p in local.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            raise FileNotFoundError(
                f"'{path}' has no safetensors weights" + (f" (only pickled {', '.join(pickled)})" if pickled else "")
                + ": videodit never unpickles weights. Convert them once, on a machine that trusts the file: "
                "T5EncoderModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
            )
        try:
            model_type = AutoConfig.from_pretrained(path).model_type
            if model_type not in ENCODERS:
                raise FileNotFoundError(f"'{path}' holds a '{model_type}' model; the text encoder must be one of "
                                        f"{', '.join(ENCODERS)} (T5, mT5, umT5 and ByT5 are 't5'/'mt5'/'umt5')")
            model = encoder_class(model_type).from_pretrained(path, use_safetensors=True)
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
    def from_config(cls, cfg: TextConfig, words: list[str] | None = None) -> TextEncoder:
        return cls.from_pretrained(cfg.pretrained, cfg.max_length) if cfg.pretrained else cls.tiny(cfg, words=words)

    def save_pretrained(self, path: str | Path) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of `prompt` the tokenizer maps to <unk> (a word-level vocabulary's gaps; byte-level: none)."""
        unk = self.tokenizer.unk_token_id
        if unk is None or not getattr(self.tokenizer, "is_fast", False):
            return []
        enc = self.tokenizer(prompt, return_offsets_mapping=True)
        return list(dict.fromkeys(prompt[a:b] for i, (a, b) in zip(enc.input_ids, enc.offset_mapping) if i == unk))

    def vocabulary(self) -> list[str]:
        """The words a word-level tokenizer knows (no special tokens); empty for an open vocabulary."""
        if self.tokenizer.unk_token_id is None or not getattr(self.tokenizer, "is_fast", False):
            return []
        backend = self.tokenizer.backend_tokenizer.model
        if type(backend).__name__ != "WordLevel":
            return []
        special = set(self.tokenizer.all_special_tokens)
        return [w for w, _ in sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if w not in special]

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
