"""MLX models against Hugging Face transformers: logits, greedy decoding, caches."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mlx_synapse.generate import generate_step  # noqa: E402
from mlx_synapse.loader import load_model  # noqa: E402
from mlx_synapse.models.cache import KVCache, RotatingKVCache, make_prompt_cache  # noqa: E402

from .hf_models import ARCHS, build_hf_model  # noqa: E402

TOKENS = [3, 17, 42, 5, 88, 1, 60, 23, 9, 71, 2, 33, 95, 14, 50, 7, 66]


@pytest.fixture(scope="module", params=sorted(ARCHS))
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = build_hf_model(request.param, path)
    model, _ = load_model(path)
    return request.param, hf, model


def hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].numpy()


def test_logits_match_hf(pair):
    _, hf, model = pair
    ours = np.array(model(mx.array([TOKENS]))[0])
    np.testing.assert_allclose(ours, hf_logits(hf, TOKENS), atol=1e-4, rtol=0)


def test_greedy_32_tokens_match_hf(pair):
    _, hf, model = pair
    prompt = TOKENS[:5]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                          min_new_tokens=32, pad_token_id=0)[0, len(prompt):].tolist()
    ours = [t for t, _ in generate_step(mx.array(prompt), model, max_tokens=32)]
    assert ours == ref


def test_cached_decoding_equals_full_forward(pair):
    _, _, model = pair
    full = np.array(model(mx.array([TOKENS]))[0])
    cache = make_prompt_cache(model)
    # A prompt chunk, then one token at a time.
    steps = [np.array(model(mx.array([TOKENS[:6]]), cache=cache)[0])]
    for t in TOKENS[6:]:
        steps.append(np.array(model(mx.array([[t]]), cache=cache)[0]))
    np.testing.assert_allclose(np.concatenate(steps), full, atol=1e-4, rtol=0)


def _window_mask(n: int, max_size: int, keep: int = 4) -> mx.array:
    q = np.arange(n)[:, None]
    k = np.arange(n)[None]
    return mx.array((k <= q) & ((k < keep) | (k > q - (max_size - keep))))


@pytest.mark.parametrize("max_size,chunk", [(64, 5), (10, 1), (10, 3), (12, 7)])
def test_rotating_cache_equals_windowed_attention(pair, max_size, chunk):
    _, _, model = pair
    tokens = (TOKENS * 3)[:40]
    ref = np.array(model(mx.array([tokens]), mask=_window_mask(len(tokens), max_size))[0])
    cache = [RotatingKVCache(max_size) for _ in model.layers]
    out = []
    for i in range(0, len(tokens), chunk):
        out.append(np.array(model(mx.array([tokens[i:i + chunk]]), cache=cache)[0]))
    np.testing.assert_allclose(np.concatenate(out), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("bits,tol", [(8, 0.05), (4, 0.5)])
def test_quantized_cache_close_to_full_forward(pair, bits, tol):
    _, _, model = pair
    full = np.array(model(mx.array([TOKENS]))[0])
    cache = make_prompt_cache(model, kv_bits=bits, kv_group_size=32)
    steps = [np.array(model(mx.array([TOKENS[:4]]), cache=cache)[0])]
    for t in TOKENS[4:]:
        steps.append(np.array(model(mx.array([[t]]), cache=cache)[0]))
    err = np.abs(np.concatenate(steps) - full).max()
    assert err < tol, f"{bits}-bit KV cache error {err} exceeds {tol}"
    assert err > 0  # it is really quantized


def test_chunked_prefill_matches_single_pass(pair):
    _, _, model = pair
    a = [t for t, _ in generate_step(mx.array(TOKENS), model, max_tokens=8, prefill_step_size=4)]
    b = [t for t, _ in generate_step(mx.array(TOKENS), model, max_tokens=8, prefill_step_size=512)]
    assert a == b


def test_plain_cache_grows_past_its_step():
    cache = KVCache()
    k = mx.random.normal((1, 2, 300, 8))
    cache.update_and_fetch(k[:, :, :200], k[:, :, :200])
    keys, _ = cache.update_and_fetch(k[:, :, 200:], k[:, :, 200:])
    np.testing.assert_array_equal(np.array(keys), np.array(k))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_fused_projections_equal_separate_ones(arch, tmp_path):
    from mlx_synapse.models.llama import fuse_projections

    build_hf_model(arch, tmp_path)
    model, _ = load_model(tmp_path)
    ref = np.array(model(mx.array([TOKENS]))[0])
    fuse_projections(model)
    assert "qkv_proj" in model.layers[0].self_attn and "q_proj" not in model.layers[0].self_attn
    assert "gate_up_proj" in model.layers[0].mlp
    np.testing.assert_allclose(np.array(model(mx.array([TOKENS]))[0]), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,n", [("llama", 2), ("llama_tied", 3), ("qwen2", 2), ("phi3", 4)])
def test_rows_split_across_cpu_streams_equal_one_stream(arch, n, tmp_path):
    from mlx_synapse.models.llama import fuse_projections
    from mlx_synapse.models.parallel import RowSplitLinear, split_rows_across_cpu_streams

    build_hf_model(arch, tmp_path)
    model, _ = load_model(tmp_path)
    ref = np.array(model(mx.array([TOKENS]))[0])
    ref_greedy = [t for t, _ in generate_step(mx.array(TOKENS[:4]), model, max_tokens=16)]
    fuse_projections(model)
    split_rows_across_cpu_streams(model, n)
    assert isinstance(model.lm_head, RowSplitLinear) and isinstance(model.layers[0].mlp.down_proj, RowSplitLinear)
    np.testing.assert_allclose(np.array(model(mx.array([TOKENS]))[0]), ref, atol=1e-5, rtol=0)
    assert [t for t, _ in generate_step(mx.array(TOKENS[:4]), model, max_tokens=16)] == ref_greedy


@pytest.mark.parametrize("max_size", [16, 64])
def test_rotating_cache_filling_in_small_steps(pair, max_size, monkeypatch):
    """Token-by-token decoding grows the rotating buffer in steps, then wraps around."""
    from mlx_synapse.models import cache as cache_module

    monkeypatch.setattr(cache_module, "_STEP", 3)
    _, _, model = pair
    tokens = (TOKENS * 3)[:40]
    ref = np.array(model(mx.array([tokens]), mask=_window_mask(len(tokens), max_size))[0])
    cache = [RotatingKVCache(max_size) for _ in model.layers]
    out = [np.array(model(mx.array([tokens[:2]]), cache=cache)[0])]
    out += [np.array(model(mx.array([[t]]), cache=cache)[0]) for t in tokens[2:]]
    np.testing.assert_allclose(np.concatenate(out), ref, atol=1e-4, rtol=0)
