"""Surprise = mean token NLL under the frozen model: both backends against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mlx_synapse.backends.numpy import load_model as load_numpy  # noqa: E402
from mlx_synapse.memory.surprise import SurpriseScorer  # noqa: E402

from .hf_models import COMMON, hf_model  # noqa: E402

VOCAB = COMMON["vocab_size"]
BOS = 1


class CharTokenizer:
    """One token per character (mod the vocabulary), offset past BOS."""

    bos_token_id = BOS
    eos_token_id = 2

    def encode(self, text, add_special_tokens=True):
        ids = [3 + (ord(c) % (VOCAB - 3)) for c in text]
        return ([BOS] if add_special_tokens else []) + ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = hf_model("llama", 0, std=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    path = tmp_path_factory.mktemp("tiny-llama")
    hf.save_pretrained(path, safe_serialization=True)
    return hf, path


def _torch_nll(hf, ids):
    with torch.no_grad():
        logits = hf(torch.tensor([ids[:-1]])).logits[0].float()
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item())


TEXTS = ["hello there", "x", "the quick brown fox jumps over the lazy dog" * 3]


def test_numpy_backend_matches_torch(tiny):
    hf, path = tiny
    scorer = SurpriseScorer(load_numpy(path), CharTokenizer())
    got = scorer(TEXTS)
    tok = CharTokenizer()
    want = [_torch_nll(hf, tok.encode(t)) for t in TEXTS]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert got.dtype == np.float64 and got.shape == (3,)


def test_mlx_backend_matches_torch(tiny):
    pytest.importorskip("mlx.core")
    from mlx_synapse.loader import load_model

    hf, path = tiny
    model, _ = load_model(path)
    got = SurpriseScorer(model, CharTokenizer())(TEXTS)
    tok = CharTokenizer()
    want = [_torch_nll(hf, tok.encode(t)) for t in TEXTS]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_truncation_and_bad_input(tiny):
    hf, path = tiny
    scorer = SurpriseScorer(load_numpy(path), CharTokenizer(), max_tokens=5)
    tok = CharTokenizer()
    long = "abcdefghijklmnop"
    assert scorer([long])[0] == pytest.approx(_torch_nll(hf, tok.encode(long)[:6]), abs=1e-4)
    with pytest.raises(ValueError, match="no tokens"):
        scorer([""])
    with pytest.raises(ValueError, match="not one str"):
        scorer("a str")
    with pytest.raises(ValueError, match="max_tokens"):
        SurpriseScorer(None, tok, max_tokens=0)


def test_real_model_finds_gibberish_more_surprising(smollm2_dir):
    import mlx_synapse

    model, tok = mlx_synapse.load(smollm2_dir, backend="numpy")
    s = SurpriseScorer(model, tok)(
        ["The capital of France is Paris.", "Paris capital the France of is.", "zxq vblorp kwengh ftaq plim"]
    )
    # measured: 2.47, 8.25, 8.07 nats/token (scored after <|endoftext|>)
    assert s[0] < 4.0 and s[1] > s[0] + 3 and s[2] > s[0] + 3
