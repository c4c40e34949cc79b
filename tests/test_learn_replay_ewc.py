"""Replay buffer (dedup, per-domain bound, importance sampling) and EWC (Fisher, penalty) against NumPy."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import mlx.nn as nn  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mlx_synapse.learn import LoRALinear  # noqa: E402
from mlx_synapse.learn.ewc import EWC, fisher_diagonal  # noqa: E402
from mlx_synapse.learn.replay import ReplayBuffer  # noqa: E402


def _ex(i):
    return {"text": f"fact number {i}"}


def test_replay_dedupes_and_bounds_each_domain():
    buf = ReplayBuffer(per_domain=3)
    assert buf.add(_ex(1), "a", 1.0)
    assert not buf.add({"text": "Fact   NUMBER 1"}, "a", 5.0)  # same text up to case and spaces
    for i, imp in ((2, 0.5), (3, 2.0), (4, 3.0)):
        buf.add(_ex(i), "a", imp)
    buf.add(_ex(9), "b", 0.1)
    assert buf.domains() == {"a": 3, "b": 1}
    kept = {e["text"] for e in buf.sample(10, domain="a")}
    # the least important (fact 2, 0.5) left; fact 1 was raised to 5.0 by its duplicate
    assert kept == {"fact number 1", "fact number 3", "fact number 4"}
    assert not buf.add(_ex(5), "a", 0.2)  # less important than all kept: not kept
    with pytest.raises(ValueError, match="importance must be a positive number"):
        buf.add(_ex(6), "a", 0.0)


def test_replay_samples_in_proportion_to_importance():
    buf = ReplayBuffer(per_domain=10, seed=0)
    buf.add(_ex(0), importance=1.0)
    buf.add(_ex(1), importance=4.0)
    firsts = [buf.sample(1)[0]["text"] for _ in range(4000)]
    share = firsts.count("fact number 1") / len(firsts)
    assert abs(share - 0.8) < 0.03, share  # 4 / (1 + 4)


def test_replay_mix_share_and_state_roundtrip():
    buf = ReplayBuffer(per_domain=100, seed=3)
    for i in range(50):
        buf.add(_ex(i), "old", 1.0 + i % 3)
    new = [{"text": f"new {i}"} for i in range(30)]
    mixed = buf.mix(new, share=0.25)
    assert len(mixed) == 40 and mixed[:30] == new and len({json.dumps(m) for m in mixed[30:]}) == 10
    copy = ReplayBuffer.from_state(json.loads(json.dumps(buf.state())))
    assert copy.sample(7) == buf.sample(7) and copy.domains() == buf.domains()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.sampled_from("xyz"), st.floats(0.1, 10)), max_size=60),
       st.integers(1, 5))
def test_replay_never_holds_more_than_per_domain(adds, cap):
    buf = ReplayBuffer(per_domain=cap)
    for i, dom, imp in adds:
        buf.add(_ex(i), dom, imp)
        assert all(n <= cap for n in buf.domains().values())


def _layer(rng):
    mx.random.seed(0)  # the base weights and lora_a come from MLX's generator
    layer = LoRALinear(nn.Linear(12, 5, bias=False), rank=3, scale=1.5)
    layer.lora_b = mx.array(rng.normal(0, 0.3, (3, 5)).astype(np.float32))
    layer.freeze()
    layer.unfreeze(keys=["lora_a", "lora_b"], recurse=False)
    return layer


def _mse(m, x, t):
    return 0.5 * mx.sum((m(x) - t) ** 2)


def test_fisher_equals_numpy_per_example_squared_gradients():
    rng = np.random.default_rng(0)
    layer = _layer(rng)
    xs = rng.normal(size=(8, 1, 12)).astype(np.float32)
    ts = rng.normal(size=(8, 1, 5)).astype(np.float32)
    fisher = fisher_diagonal(layer, [(mx.array(x), mx.array(t)) for x, t in zip(xs, ts)], _mse)
    W, A, B, s = np.array(layer.linear.weight), np.array(layer.lora_a), np.array(layer.lora_b), 1.5
    fa, fb = np.zeros_like(A), np.zeros_like(B)
    for x, t in zip(xs, ts):
        r = x @ (W + s * B.T @ A.T).T - t  # (1, 5): dL/dy
        fb += (s * (x @ A).T @ r) ** 2  # dL/dB = s (xA)^T r
        fa += (s * x.T @ (r @ B.T)) ** 2  # dL/dA = s x^T (r B^T)
    np.testing.assert_allclose(np.array(fisher["lora_b"]), fb / 8, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.array(fisher["lora_a"]), fa / 8, rtol=1e-4, atol=1e-6)


def test_ewc_penalty_and_online_update_equal_numpy():
    rng = np.random.default_rng(1)
    layer = _layer(rng)
    f1 = {"lora_a": mx.array(rng.random((12, 3)).astype(np.float32)),
          "lora_b": mx.array(rng.random((3, 5)).astype(np.float32))}
    ewc = EWC(lam=0.7, gamma=0.5)
    assert ewc.penalty(layer).item() == 0.0
    ewc.consolidate(layer, f1)
    anchor_a, anchor_b = np.array(layer.lora_a), np.array(layer.lora_b)
    assert ewc.penalty(layer).item() == 0.0  # at the anchor
    new_a = anchor_a + rng.normal(0, 0.1, anchor_a.shape).astype(np.float32)
    new_b = anchor_b + rng.normal(0, 0.1, anchor_b.shape).astype(np.float32)
    layer.lora_a, layer.lora_b = mx.array(new_a), mx.array(new_b)
    ref = 0.7 * (np.sum(np.array(f1["lora_a"]) * (new_a - anchor_a) ** 2)
                 + np.sum(np.array(f1["lora_b"]) * (new_b - anchor_b) ** 2))
    np.testing.assert_allclose(ewc.penalty(layer).item(), ref, rtol=1e-5)
    # its gradient is 2 lam F (theta - theta*)
    g = nn.value_and_grad(layer, lambda m: ewc.penalty(m))(layer)[1]
    np.testing.assert_allclose(np.array(g["lora_b"]), 2 * 0.7 * np.array(f1["lora_b"]) * (new_b - anchor_b),
                               rtol=1e-5, atol=1e-7)
    f2 = {k: v * 3 for k, v in f1.items()}
    ewc.consolidate(layer, f2)  # F <- 0.5 F1 + F2 = 3.5 F1, anchored at the new values
    np.testing.assert_allclose(np.array(ewc.fisher["lora_a"]), 3.5 * np.array(f1["lora_a"]), rtol=1e-6)
    assert ewc.penalty(layer).item() == 0.0
    restored = EWC(lam=0.7)
    restored.load_state(ewc.state())
    layer.lora_b = mx.array(new_b + 1)
    np.testing.assert_allclose(restored.penalty(layer).item(), ewc.penalty(layer).item(), rtol=1e-6)


def test_ewc_penalty_holds_parameters_in_training(tmp_path):
    """A strong EWC term keeps a trained parameter near its anchor where plain training moves it."""
    import mlx.optimizers as optim

    rng = np.random.default_rng(2)
    x = mx.array(rng.normal(size=(16, 12)).astype(np.float32))
    t = mx.array(rng.normal(size=(16, 5)).astype(np.float32))
    moved = {}
    for lam in (0.0, 400.0):
        layer = _layer(np.random.default_rng(2))
        ewc = EWC(lam=lam)
        ewc.consolidate(layer, {"lora_a": mx.ones((12, 3)), "lora_b": mx.ones((3, 5))})
        anchor = np.array(layer.lora_b)
        opt = optim.SGD(learning_rate=1e-3)
        step = nn.value_and_grad(layer, lambda m: _mse(m, x, t) + ewc.penalty(m))
        for _ in range(50):
            _, g = step(layer)
            opt.update(layer, g)
        moved[lam] = np.abs(np.array(layer.lora_b) - anchor).max()
    assert moved[400.0] < 0.1 * moved[0.0], moved


def test_checkpoint_restores_adapter_buffer_and_fisher(tmp_path):
    from mlx_synapse.learn import apply_lora, lora_layers
    from mlx_synapse.learn.checkpoint import load_checkpoint, save_checkpoint
    from mlx_synapse.loader import load_model

    from .learn_util import tiny_model_dir

    path = tiny_model_dir(tmp_path / "m", bits=4)
    model, _ = load_model(path)
    apply_lora(model, num_layers=2, rank=3)
    rng = np.random.default_rng(0)
    for layer in lora_layers(model).values():
        layer.lora_b = mx.array(rng.normal(0, 0.05, layer.lora_b.shape).astype(np.float32))
    from mlx.utils import tree_flatten, tree_unflatten

    fisher = {k: mx.array(rng.random(v.shape).astype(np.float32)) for k, v in tree_flatten(model.trainable_parameters())}
    ewc = EWC(lam=2.0, gamma=0.9)
    ewc.consolidate(model, fisher)
    buf = ReplayBuffer(per_domain=5, seed=1)
    for i in range(8):
        buf.add(_ex(i), "d", 1 + i)
    save_checkpoint(tmp_path / "ck", model, buf, ewc, base_model=str(path))
    tokens = mx.array([[1, 2, 3, 4, 5, 6]])
    ref = np.array(model(tokens))
    for layer in lora_layers(model).values():  # move away from the anchor: a non-zero penalty
        layer.lora_b = layer.lora_b + 0.01
    moved = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}

    fresh, _ = load_model(path)
    config, buf2, ewc2 = load_checkpoint(tmp_path / "ck", fresh)
    assert config["base_model"] == str(path)
    np.testing.assert_array_equal(np.array(fresh(tokens)), ref)
    assert buf2.sample(5) == buf.sample(5) and buf2.domains() == {"d": 5}
    fresh.update(tree_unflatten([(k, mx.array(v)) for k, v in moved.items()]))
    np.testing.assert_allclose(ewc2.penalty(fresh).item(), ewc.penalty(model).item(), rtol=1e-6)
    assert ewc2.penalty(fresh).item() > 0 and (ewc2.lam, ewc2.gamma) == (2.0, 0.9)
