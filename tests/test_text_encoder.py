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


def test_word_tokenizer_covers_the_caption_language_and_round_trips(tmp_path):
    from videodit.data.cli import main
    from videodit.data.shapes import make_example, split_words, vocabulary

    te = TextEncoder.tiny(TextConfig(tiny_tokenizer="words"), words=vocabulary())
    tok = te.tokenizer
    for i in range(200):  # every caption word is in the vocabulary, split exactly as split_words does
        for split in ("train", "heldout"):
            caption = make_example(0, i, split)[1]
            pieces = tok.convert_ids_to_tokens(tok(caption).input_ids)
            assert pieces == split_words(caption) + ["</s>"] and "<unk>" not in pieces
    assert tok.convert_ids_to_tokens(tok("A PURPLE circle!").input_ids) == ["a", "<unk>", "circle", "<unk>", "</s>"]
    assert tok("").input_ids == [tok.eos_token_id]  # the unconditional prompt is one end-of-sequence token
    prompts = ["a red ball moving up-left", "", "two blue squares"]
    emb, mask = te(prompts)
    assert mask.sum(1).tolist() == [8, 1, 4] and (emb[~mask] == 0).all()

    assert main(["text-encoder", str(tmp_path), "--tokenizer", "words"]) == 0  # the CLI making the folder
    loaded = TextEncoder.from_pretrained(tmp_path / "text_encoder", max_length=128)
    emb2, mask2 = loaded(prompts)
    assert torch.equal(mask2, mask) and torch.allclose(emb2, emb, atol=1e-6)


def test_explicit_text_encoder_wins_over_the_vae_checkpoints(tmp_path):
    from videodit.checkpoint import save_text_encoder, write_config
    from videodit.config import load_config
    from videodit.data.cli import main
    from videodit.train.tasks import load_text_encoder_for

    vae_ckpt = tmp_path / "vae"
    vae_ckpt.mkdir()
    write_config(load_config(None, {}), vae_ckpt)
    save_text_encoder(TextEncoder.tiny(TextConfig()), vae_ckpt)  # a byte-level one comes with the VAE
    assert main(["text-encoder", str(tmp_path / "t5"), "--tokenizer", "words"]) == 0
    cfg = load_config(None, {"train.vae": str(vae_ckpt)})
    assert load_text_encoder_for(cfg).model.config.vocab_size == 384  # the VAE checkpoint's
    cfg = load_config(None, {"train.vae": str(vae_ckpt), "text.pretrained": str(tmp_path / "t5" / "text_encoder")})
    assert load_text_encoder_for(cfg).tokenizer("red").input_ids[-1] == 1  # words: "red" </s>
    assert load_text_encoder_for(cfg).model.config.vocab_size == 85


def test_the_word_tokenizer_needs_its_vocabulary():
    with pytest.raises(ValueError, match="needs the vocabulary"):
        TextEncoder.tiny(TextConfig(tiny_tokenizer="words"))


@pytest.mark.parametrize("kind", ["umt5", "mt5", "t5"])
def test_t5_family_folders_load_as_their_own_class_and_equal_transformers(tmp_path, kind):
    """umT5 has a relative-position bias in every layer (T5: the first only); a folder loads as the class its
    config names, so our embeddings equal a direct transformers call on it (padding masked, zeros there)."""
    import transformers

    config_cls = {"umt5": transformers.UMT5Config, "mt5": transformers.MT5Config, "t5": transformers.T5Config}[kind]
    model_cls = {"umt5": transformers.UMT5EncoderModel, "mt5": transformers.MT5EncoderModel,
                 "t5": transformers.T5EncoderModel}[kind]
    torch.manual_seed(0)
    ref = model_cls(config_cls(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4,
                               dropout_rate=0.0, feed_forward_proj="gated-gelu")).eval()
    ref.save_pretrained(tmp_path)
    te = TextEncoder.from_pretrained(tmp_path, max_length=16)  # no tokenizer files, byte-level vocabulary: ByT5's
    assert type(te.model).__name__ == model_cls.__name__
    prompts = ["a red circle moving up", "a dog"]
    emb, mask = te(prompts)
    ids, m = te.tokenize(prompts)
    with torch.no_grad():
        direct = ref(input_ids=ids, attention_mask=m.long()).last_hidden_state * m[..., None]
    assert torch.allclose(emb, direct, atol=1e-6) and mask.tolist() == m.tolist() and not mask[1].all()
    if kind == "umt5":  # what loading it as T5 did: all but the first layer's position bias dropped
        wrong = transformers.T5EncoderModel.from_pretrained(tmp_path)
        with torch.no_grad():
            other = wrong(input_ids=ids, attention_mask=m.long()).last_hidden_state * m[..., None]
        assert (other - direct).abs().max() > 1e-2


def test_a_folder_of_another_model_type_is_refused(tmp_path):
    import transformers

    transformers.BertModel(transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32)).save_pretrained(
        tmp_path)
    with pytest.raises(FileNotFoundError, match="'bert' model; the text encoder must be one of t5, mt5, umt5"):
        TextEncoder.from_pretrained(tmp_path, max_length=16)
