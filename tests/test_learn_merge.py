"""TIES / DARE / linear merging against a by-hand reference, adapters merged in the dense space, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from mlx_synapse.learn import apply_lora, load_adapter, lora_layers, remove_lora, save_adapter  # noqa: E402
from mlx_synapse.learn.merge import (  # noqa: E402
    adapter_deltas, apply_deltas, dare, linear, main, merge_adapters, merge_tensors, refactor,
    save_merged_adapter, ties, trim,
)
from mlx_synapse.loader import load_model  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402

TOKENS = mx.array([[5, 17, 42, 3, 88, 1, 60, 23, 9, 71, 2]])


def ref_ties(vectors, density, lam):
    """TIES by hand, one entry at a time (Yadav et al., 2023, algorithm 1)."""
    flat = [list(np.asarray(v, np.float64).ravel()) for v in vectors]
    n = len(flat[0])
    k = math.ceil(density * n - 1e-9)
    trimmed = []
    for v in flat:
        kth = sorted((abs(x) for x in v), reverse=True)[k - 1]  # the k-th largest magnitude
        trimmed.append([x if abs(x) >= kth else 0.0 for x in v])
    out = []
    for j in range(n):
        total = sum(t[j] for t in trimmed)
        elected = 1 if total > 0 else (-1 if total < 0 else 0)
        agree = [t[j] for t in trimmed if t[j] != 0 and (1 if t[j] > 0 else -1) == elected]
        out.append(lam * sum(agree) / len(agree) if agree else 0.0)
    return np.array(out).reshape(np.shape(vectors[0]))


def test_ties_small_example_by_hand():
    a = np.array([0.5, -0.1, 0.3, -2.0], np.float32)
    b = np.array([-0.4, 0.2, 0.1, -1.0], np.float32)
    c = np.array([0.6, 0.3, -0.05, 3.5], np.float32)
    # density 0.5 keeps 2 of 4 per vector: a [0.5, 0, 0, -2.0], b [-0.4, 0, 0, -1.0], c [0.6, 0, 0, 3.5]
    # sums: [0.7, 0, 0, 0.5] -> signs [+, 0, 0, +]; agreeing means: [(0.5+0.6)/2, 0, 0, 3.5]
    got = ties([a, b, c], density=0.5, lam=2.0)
    np.testing.assert_allclose(got, 2.0 * np.array([0.55, 0, 0, 3.5]), rtol=1e-6)
    np.testing.assert_allclose(got, ref_ties([a, b, c], 0.5, 2.0), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 4),
    shape=st.sampled_from([(7,), (3, 5), (4, 4), (2, 3, 3)]),
    density=st.floats(0.05, 1.0),
    lam=st.floats(-2.0, 3.0),
    data=st.data(),
)
def test_ties_equals_reference(n, shape, density, lam, data):
    elems = st.floats(-4, 4, width=32, allow_subnormal=False)
    vectors = [data.draw(arrays(np.float32, shape, elements=elems)) for _ in range(n)]
    np.testing.assert_allclose(ties(vectors, density, lam), ref_ties(vectors, density, lam), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from([(9,), (4, 6)]), density=st.floats(0.05, 1.0), data=st.data())
def test_trim_keeps_top_k(shape, density, data):
    v = data.draw(arrays(np.float32, shape, elements=st.floats(-4, 4, width=32)))
    t = trim(v, density)
    k = math.ceil(density * v.size - 1e-9)
    kept = t != 0
    nonzero = int((v != 0).sum())
    # at least min(k, nonzero) entries survive (more only on ties), each one the original value
    assert kept.sum() >= min(k, nonzero)
    assert np.array_equal(t[kept], v[kept])
    if kept.any() and (~kept).any():
        assert np.abs(v[~kept]).max() <= np.abs(v[kept]).min()


def test_ties_with_one_source_and_full_density_is_lam_times_it():
    v = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(ties([v], 1.0, 0.7), 0.7 * v, rtol=1e-6)


def test_dare_drops_and_rescales_reproducibly():
    v = np.random.default_rng(1).normal(size=(200, 50)).astype(np.float32)
    p = 0.7
    d = dare(v, p, np.random.default_rng(5))
    kept = d != 0
    np.testing.assert_allclose(d[kept], v[kept] / (1 - p), rtol=1e-6)
    assert abs((~kept).mean() - p) < 0.02  # 10,000 Bernoulli draws: 4 standard deviations is 0.018
    assert np.array_equal(d, dare(v, p, np.random.default_rng(5)))
    assert not np.array_equal(d, dare(v, p, np.random.default_rng(6)))
    # unbiased: the mean over many masks approaches the original delta
    mean = np.mean([dare(v[:4], p, np.random.default_rng(s)) for s in range(4000)], axis=0)
    np.testing.assert_allclose(mean, v[:4], atol=0.15 * np.abs(v[:4]).max())
    with pytest.raises(ValueError, match="drop probability"):
        dare(v, 1.0, np.random.default_rng(0))


def test_methods_and_seeds():
    rng = np.random.default_rng(2)
    vs = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(3)]
    np.testing.assert_allclose(merge_tensors(vs, "linear", lam=1.5), 1.5 * np.mean(vs, axis=0), rtol=1e-6)
    np.testing.assert_allclose(linear(vs, [1, 0, 2]), vs[0] + 2 * vs[2], rtol=1e-6)
    # DARE at density 1 drops nothing: dare_ties is TIES at density 1, dare_linear the mean
    np.testing.assert_allclose(merge_tensors(vs, "dare_ties", 1.0), ref_ties(vs, 1.0, 1.0), rtol=1e-6)
    np.testing.assert_allclose(merge_tensors(vs, "dare_linear", 1.0), np.mean(vs, axis=0), rtol=1e-6)
    a = merge_tensors(vs, "dare_ties", 0.3, seed=1, name="x")
    assert np.array_equal(a, merge_tensors(vs, "dare_ties", 0.3, seed=1, name="x"))
    assert not np.array_equal(a, merge_tensors(vs, "dare_ties", 0.3, seed=2, name="x"))
    for bad, match in [(dict(method="slerp"), "unknown method"), (dict(density=0.0), "density"),
                       (dict(density=1.5), "density"), (dict(method="linear", weights=[1]), "one weight")]:
        with pytest.raises(ValueError, match=match):
            merge_tensors(vs, **bad)
    with pytest.raises(ValueError, match="different base models"):
        merge_tensors([vs[0], vs[1][:3]])


def test_refactor_is_the_truncated_svd():
    rng = np.random.default_rng(3)
    low = (rng.normal(size=(12, 3)) @ rng.normal(size=(3, 9))).astype(np.float32)  # rank 3
    full = rng.normal(size=(12, 9)).astype(np.float32)
    factors, err = refactor({"l": low, "f": full}, rank=3, scale=2.0)
    a, b = factors["l.lora_a"], factors["l.lora_b"]
    assert a.shape == (9, 3) and b.shape == (3, 12)
    np.testing.assert_allclose(2.0 * b.T @ a.T, low, atol=1e-4)
    assert err["per_layer"]["l"] < 1e-5
    s = np.linalg.svd(full.astype(np.float64), compute_uv=False)
    assert err["per_layer"]["f"] == pytest.approx(math.sqrt((s[3:] ** 2).sum() / (s ** 2).sum()), rel=1e-6)
    approx = 2.0 * factors["f.lora_b"].T @ factors["f.lora_a"].T
    assert np.linalg.norm(full - approx) / np.linalg.norm(full) == pytest.approx(err["per_layer"]["f"], rel=1e-4)
    # more rank than the matrix has: padded with zeros, exact
    factors, err = refactor({"l": low}, rank=20)
    assert factors["l.lora_a"].shape == (9, 20) and err["overall"] < 1e-6


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A tiny float Llama and two random LoRA adapters on it (ranks 2 and 3, different layers)."""
    root = tmp_path_factory.mktemp("merge")
    model_dir = tiny_model_dir(root / "m", bits=None)
    dirs = []
    for seed, (rank, n, keys) in enumerate([(2, 2, None), (3, 3, ["self_attn.q_proj", "mlp.down_proj"])]):
        model, _ = load_model(model_dir)
        mx.random.seed(seed)
        apply_lora(model, num_layers=n, rank=rank, scale=2.0, keys=keys)
        rng = np.random.default_rng(seed)
        for layer in lora_layers(model).values():
            layer.lora_b = mx.array(rng.normal(0, 0.05, layer.lora_b.shape).astype(np.float32))
        save_adapter(model, root / f"a{seed}")
        dirs.append(root / f"a{seed}")
    return model_dir, dirs


def _logits(model):
    return np.array(model(TOKENS)[0], np.float32)


def test_adapter_deltas_match_the_layers(adapters):
    model_dir, (a0, _) = adapters
    model, _ = load_model(model_dir)
    load_adapter(model, a0)
    _, deltas = adapter_deltas(a0)
    layers = lora_layers(model)
    assert set(deltas) == set(layers) and len(deltas) == 14
    for p, layer in layers.items():
        np.testing.assert_allclose(deltas[p], np.array(layer.delta()), atol=1e-6)


def test_merged_adapter_equals_the_dense_reference(adapters, tmp_path):
    model_dir, dirs = adapters
    d0, d1 = adapter_deltas(dirs[0])[1], adapter_deltas(dirs[1])[1]
    merged, config = merge_adapters(dirs, method="ties", density=0.3, lam=1.2)
    assert config["num_layers"] == 3 and len(config["lora_parameters"]["keys"]) == 7
    assert len(merged) == 21  # every (block, key) of the last 3 blocks, zero where no source had it
    for name, d in merged.items():
        srcs = [src.get(name, np.zeros_like(d)) for src in (d0, d1)]
        if name == "model.layers.2.self_attn.q_proj":  # the by-hand reference is slow: one layer
            np.testing.assert_allclose(d, ref_ties(srcs, 0.3, 1.2), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(d, ties(srcs, 0.3, 1.2), rtol=1e-6)
    assert not merged["model.layers.0.self_attn.k_proj"].any()  # in no source

    # full rank: the written adapter reproduces the merged deltas, and so does fusing them
    errors = save_merged_adapter(merged, config, tmp_path / "out", rank=64)
    assert errors["overall"] < 1e-5
    adapted, _ = load_model(model_dir)
    load_adapter(adapted, tmp_path / "out")
    fused, _ = load_model(model_dir)
    assert apply_deltas(fused, merged) == 21
    np.testing.assert_allclose(_logits(adapted), _logits(fused), atol=2e-4)
    base, _ = load_model(model_dir)
    assert np.abs(_logits(fused) - _logits(base)).max() > 1e-2
    # low rank: the error is reported and it is the truncated SVD's
    errors = save_merged_adapter(merged, config, tmp_path / "r2", rank=2)
    assert 0.05 < errors["overall"] < 1
    assert json.loads((tmp_path / "r2" / "adapter_config.json").read_text())["merge"]["svd_relative_error"] \
        == pytest.approx(errors["overall"])


def test_linear_merge_of_adapters_is_exact_at_summed_rank(adapters, tmp_path):
    model_dir, dirs = adapters
    merged, config = merge_adapters(dirs, method="linear", weights=[1.0, 1.0])
    errors = save_merged_adapter(merged, config, tmp_path / "sum", rank=5)  # ranks 2 + 3
    assert errors["overall"] < 1e-5
    both, _ = load_model(model_dir)
    load_adapter(both, tmp_path / "sum")
    # the sum of two adapters equals applying both: fuse one, adapt with the other
    ref, _ = load_model(model_dir)
    apply_deltas(ref, adapter_deltas(dirs[0])[1])
    load_adapter(ref, dirs[1])
    np.testing.assert_allclose(_logits(both), _logits(ref), atol=2e-4)
    remove_lora(both)


def test_cli(adapters, tmp_path):
    _, dirs = adapters
    out = tmp_path / "c"
    assert main(["--method", "ties", "--density", "0.2", "--lam", "1.0", str(dirs[0]), str(dirs[1]),
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["lora_parameters"]["rank"] == 5 and cfg["merge"]["method"] == "ties"
    # task vectors: .safetensors in, .safetensors out
    tv = []
    for i in range(2):
        tv.append(tmp_path / f"t{i}.safetensors")
        mx.save_safetensors(str(tv[-1]), {"w": mx.array(np.full((3, 2), i + 1.0, np.float32))})
    assert main(["--method", "linear", *map(str, tv), "--out", str(tmp_path / "m.safetensors")]) == 0
    np.testing.assert_allclose(np.array(mx.load(str(tmp_path / "m.safetensors"))["w"]), 1.5)


@pytest.mark.parametrize("argv, message", [
    (["{a0}", "--out", "{tmp}/x"], "at least two adapters"),
    (["{a0}", "{tmp}/nope", "--out", "{tmp}/x"], "does not exist"),
    (["--density", "0", "{a0}", "{a1}", "--out", "{tmp}/x"], "density must be in (0, 1]"),
    (["--rank", "0", "{a0}", "{a1}", "--out", "{tmp}/x"], "rank must be at least 1"),
    (["--weights", "1,x", "{a0}", "{a1}", "--out", "{tmp}/x"], "--weights must be"),
    (["{tmp}/bad.safetensors", "{tmp}/bad.safetensors", "--out", "{tmp}/x.safetensors"], "cannot read"),
])
def test_cli_errors_are_one_line(adapters, tmp_path, argv, message):
    _, (a0, a1) = adapters
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    argv = [a.format(a0=a0, a1=a1, tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "mlx_synapse.learn.merge", *argv], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
