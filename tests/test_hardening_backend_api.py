"""One generation API over both backends: ``mlx_synapse.generate_step`` takes a model of
either, yields the same types, and hands samplers / logits processors NumPy arrays."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import mlx_synapse  # noqa: E402
from mlx_synapse import loader  # noqa: E402
from mlx_synapse import sample as mlx_sample  # noqa: E402
from mlx_synapse.backends.numpy import sample as np_sample  # noqa: E402

from .hf_models import COMMON, hf_model  # noqa: E402

V = COMMON["vocab_size"]
PROMPT = [3, 17, 5, 60, 22, 9]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The same tiny float32 llama on both backends (MLX on its CPU device: float32 too)."""
    import mlx_synapse.tokenizer as tokenizer

    path = tmp_path_factory.mktemp("tiny")
    hf_model("llama", 0, std=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None).save_pretrained(
        path, safe_serialization=True)
    real, old = tokenizer.load_tokenizer, mx.default_device()
    tokenizer.load_tokenizer = lambda p, eos_token_ids=None: None
    mx.set_default_device(mx.cpu)
    try:
        out = {b: loader.load(path, backend=b)[0] for b in ("mlx", "numpy")}
    finally:
        tokenizer.load_tokenizer = real
        mx.set_default_device(old)
    assert out["mlx"].backend == "mlx" and out["numpy"].backend == "numpy"
    return out


def _describe(a):
    return type(a).__name__, str(a.dtype), a.shape


@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_public_generate_step_yields_ints_and_numpy_logprobs(models, backend):
    steps = list(mlx_synapse.generate_step(PROMPT, models[backend], max_tokens=5))
    assert len(steps) == 5
    for tok, lp in steps:
        assert type(tok) is int and 0 <= tok < V
        assert _describe(lp) == ("ndarray", "float32", (V,))
        assert np.exp(lp.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-4)
        assert tok == int(np.argmax(lp))  # greedy by default


def test_samplers_and_processors_see_numpy_on_both_backends(models):
    seen, tokens = {}, {}
    for backend, model in models.items():
        calls = []

        def processor(toks, logits):
            calls.append(("proc", _describe(toks), _describe(logits), toks.tolist()))
            return logits

        def sampler(lp):
            calls.append(("sampler", _describe(lp)))
            return int(np.argmax(lp))

        tokens[backend] = [t for t, _ in mlx_synapse.generate_step(
            PROMPT, model, max_tokens=4, sampler=sampler, logits_processors=[processor])]
        seen[backend] = calls
    assert seen["mlx"] == seen["numpy"]  # the same calls with the same array types and histories
    procs = [c for c in seen["mlx"] if c[0] == "proc"]
    assert procs[0][1] == ("ndarray", "int64", (len(PROMPT),))
    assert procs[0][2] == ("ndarray", "float32", (V,))
    assert [c[3] for c in procs] == [PROMPT + tokens["mlx"][:i] for i in range(4)]
    assert [c for c in seen["mlx"] if c[0] == "sampler"][0][1] == ("ndarray", "float32", (V,))
    assert tokens["mlx"] == tokens["numpy"]


def test_a_numpy_processor_steers_both_backends_alike(models):
    def next_one(toks, logits):  # force "last token + 1": the history must be right each step
        out = np.full_like(logits, -1e9)
        out[(int(toks[-1]) + 1) % V] = 0.0
        return out

    for model in models.values():
        got = [t for t, _ in mlx_synapse.generate_step(PROMPT, model, max_tokens=6, logits_processors=[next_one])]
        assert got == [(PROMPT[-1] + i) % V for i in range(1, 7)]


def test_logprobs_agree_across_backends(models):
    a = list(mlx_synapse.generate_step(PROMPT, models["mlx"], max_tokens=8))
    b = list(mlx_synapse.generate_step(PROMPT, models["numpy"], max_tokens=8))
    assert [t for t, _ in a] == [t for t, _ in b]
    for (_, la), (_, lb) in zip(a, b):
        np.testing.assert_allclose(la, lb, atol=1e-4 * np.abs(lb).max(), rtol=0)


def test_mlx_native_callables_run_on_device_and_on_numpy_models(models):
    inner = mlx_sample.make_logits_processors(1.5, 8)[0]
    kinds = []

    @mlx_sample.mlx_native
    def penalty(toks, logits):
        kinds.append((type(toks).__name__, type(logits).__name__, logits.shape))
        return inner(toks, logits)

    for backend, model in models.items():
        ours = [t for t, _ in mlx_synapse.generate_step(
            PROMPT, model, max_tokens=10, sampler=mlx_sample.make_sampler(0.0), logits_processors=[penalty])]
        twin = [t for t, _ in mlx_synapse.generate_step(
            PROMPT, model, max_tokens=10, logits_processors=np_sample.make_logits_processors(1.5, 8))]
        assert ours == twin, backend
    assert set(kinds[:10]) == {("array", "array", (1, V))}  # on the MLX model: no host copies


def test_kv_bits_on_a_numpy_model_is_a_clear_error(models):
    with pytest.raises(ValueError, match="--kv-bits needs the MLX backend"):
        next(mlx_synapse.generate_step(PROMPT, models["numpy"], kv_bits=8))


class _Detok:
    def reset(self):
        self.toks, self.last_segment = [], ""

    def add_token(self, t):
        self.toks.append(t)
        self.last_segment = f"<{t}>"

    def finalize(self):
        pass


class _Tok:
    detokenizer = _Detok()
    eos_token_ids = []


def test_stream_generate_hands_a_user_sampler_numpy_on_both(models):
    from mlx_synapse.generate import stream_generate

    for model in models.values():
        seen = []

        def sampler(lp):
            seen.append(_describe(lp))
            return int(np.argsort(lp)[-2])  # the runner-up: visibly not the backend's own sampler

        out = list(stream_generate(model, _Tok(), PROMPT, max_tokens=3, sampler=sampler))
        assert seen == [("ndarray", "float32", (V,))] * 3
        assert all(isinstance(r.logprobs, np.ndarray) for r in out)
        assert [r.token for r in out] == [int(np.argsort(r.logprobs)[-2]) for r in out]


def test_no_limit_means_the_same_on_both_backends(models):
    import itertools

    a = [t for t, _ in itertools.islice(mlx_synapse.generate_step(PROMPT, models["mlx"], max_tokens=-1), 300)]
    b = [t for t, _ in itertools.islice(mlx_synapse.generate_step(PROMPT, models["numpy"], max_tokens=-1), 300)]
    assert len(a) == len(b) == 300 and a == b  # past the NumPy history's first 256-token buffer


@pytest.mark.parametrize("backend", ["mlx", "numpy"])
@pytest.mark.parametrize("bad", [0, -4])
def test_bad_prefill_step_is_an_error_not_a_hang(models, backend, bad):
    with pytest.raises(ValueError, match="prefill_step_size must be a positive integer but got"):
        next(mlx_synapse.generate_step(PROMPT, models[backend], prefill_step_size=bad))


@pytest.mark.parametrize("backend", ["mlx", "numpy"])
def test_empty_prompt_is_a_clear_error(models, backend):
    with pytest.raises(ValueError, match="prompt"):
        next(mlx_synapse.generate_step([], models[backend]))
