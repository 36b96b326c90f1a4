import warnings

import pytest
import torch

from videodit.config import TextConfig
from videodit.text_encoder import TextEncoder


def test_wrapper_equals_direct_transformers_call(tmp_path):
    from transformers import ByT5Tokenizer, T5EncoderModel

    te = TextEncoder.tiny(TextConfig())
    te.save_pretrained(tmp_path)
    loaded = TextEncoder.from_pretrained(tmp_path, max_length=64)
    prompts = ["a red circle moving to the left", "", "a small blue square bounces toward the top"]
    emb, mask = loaded(prompts)

    model = T5EncoderModel.from_pretrained(tmp_path).eval()
    tok = ByT5Tokenizer()(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
    assert emb.shape == ref.shape and mask.shape == tok.attention_mask.shape
    m = tok.attention_mask.bool()
    assert torch.allclose(emb[m], ref[m], atol=1e-6)
    assert (emb[~m] == 0).all()
    assert mask[1].sum() == 1  # the empty (unconditional) prompt is one end-of-sequence token
    assert not any(p.requires_grad for p in loaded.parameters())


def test_truncation_warns():
    te = TextEncoder.tiny(TextConfig(max_length=16))
    with pytest.warns(UserWarning, match="truncated"):
        emb, mask = te(["x" * 40])
    assert emb.shape[1] == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        te(["short"])


def test_tiny_is_deterministic_and_missing_path_is_clear(tmp_path):
    a, b = TextEncoder.tiny(TextConfig()), TextEncoder.tiny(TextConfig())
    assert torch.equal(a(["hi"])[0], b(["hi"])[0])
    with pytest.raises(FileNotFoundError, match="T5 encoder"):
        TextEncoder.from_pretrained(tmp_path / "missing", 64)
