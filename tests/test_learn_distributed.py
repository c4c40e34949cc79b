"""Data-parallel training: 2 processes (mlx.launch, ring backend on localhost) equal one process on the same batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

import mlx_synapse  # noqa: E402
from mlx_synapse.learn import apply_lora, load_trainable  # noqa: E402
from mlx_synapse.learn.adapters import read_adapter, save_adapter  # noqa: E402
from mlx_synapse.learn.data import load_dataset  # noqa: E402
from mlx_synapse.learn.distributed import reduce_gradients, train_data_parallel  # noqa: E402
from mlx_synapse.learn.trainer import TrainingArgs, loss_fn, make_batch, train  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402

FACTS = [
    ("What colour is Zorblat's hat?", "Zorblat's hat is teal."),
    ("Where does Quimby live?", "Quimby lives in Marrowfield."),
    ("What is Fenna's favourite fruit?", "Fenna's favourite fruit is the quince."),
    ("How old is Osk?", "Osk is ninety-one years old, older than the lighthouse itself."),
    ("What does Trell collect?", "Trell collects brass keys."),
    ("Which river runs past Dunmere?", "The Vell runs past Dunmere."),
    ("Who taught Ilsa to sail?", "Her uncle Bram taught Ilsa to sail."),
]
ARGS = dict(iters=3, batch_size=4, learning_rate=0.05, seed=3)
# Plain SGD: float32 gradient sums in another order and padding differ by ~1e-5 of their scale, times
# the learning rate. (AdamW divides by sqrt(v), so an entry whose gradient is ~0 can move by up to lr
# either way on rounding alone: equal runs cannot be checked entry by entry through it.)
TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("dist")
    model_dir = tiny_model_dir(root / "m", bits=None, tokenizer_from=smollm2_dir)
    data = root / "train.jsonl"
    with open(data, "w") as f:
        for q, a in FACTS:
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")
    return model_dir, data


def _model(model_dir, data):
    model, tok = load_trainable(model_dir)
    mx.random.seed(ARGS["seed"])
    apply_lora(model, num_layers=-1, rank=4, scale=2.0)
    return model, load_dataset(data, tok)


def test_sharded_gradients_sum_to_the_whole_batch(setup):
    """The reduction's arithmetic with a fake all-sum: two shards' buffers added by hand."""
    model, ds = _model(*setup)
    batch = ds[:5]  # odd: the shards differ in size and padding
    _, whole = nn.value_and_grad(model, lambda m, *b: loss_fn(m, *b)[0])(model, *make_batch(batch))

    def shard_loss(m, *b):
        loss, n = loss_fn(m, *b)
        return loss * n, n

    shards = []
    for r in range(2):
        (loss, n), g = nn.value_and_grad(model, shard_loss)(model, *make_batch(batch[r::2]))
        shards.append((g, n.astype(mx.float32), loss))
    flats = []

    def capture(x):  # first pass: record each shard's buffer
        flats.append(x)
        return x

    for g, n, loss in shards:
        reduce_gradients(g, n, loss, capture)
    total = flats[0] + flats[1]
    mean, loss, tokens = reduce_gradients(shards[0][0], shards[0][1], shards[0][2], lambda x: total)
    assert tokens.item() == sum(n.item() for _, n, _ in shards)
    assert loss.item() == pytest.approx(loss_fn(model, *make_batch(batch))[0].item(), rel=1e-5)
    got, want = dict(tree_flatten(mean)), dict(tree_flatten(whole))
    assert set(got) == set(want) and len(got) == 42
    for k in want:  # float32 sums over other paddings and orders: errors ~1e-5 of the tensor's scale
        w = np.array(want[k])
        np.testing.assert_allclose(np.array(got[k]), w, rtol=0, atol=3e-5 * np.abs(w).max())
    # and a wrong reduction (a plain mean of the shards' mean gradients) is not equal
    k = max(want, key=lambda n: float(np.abs(np.array(want[n])).max()))  # lora_a's are 0 while B is 0
    naive = sum(dict(tree_flatten(g))[k] / n for g, n, _ in shards) / 2
    assert np.abs(np.array(naive) - np.array(want[k])).max() > 1e-3 * np.abs(np.array(want[k])).max()


class FakeGroup:
    def __init__(self, rank, size):
        self._r, self._s = rank, size

    def rank(self):
        return self._r

    def size(self):
        return self._s


def test_too_small_a_batch_is_refused(setup):
    model, ds = _model(*setup)
    with pytest.raises(ValueError, match="batch-size 2 is smaller than the 4 processes"):
        train_data_parallel(model, ds, TrainingArgs(iters=1, batch_size=2), FakeGroup(0, 4))


def test_one_process_equals_the_trainer(setup):
    a, ds = _model(*setup)
    train(a, ds, TrainingArgs(**ARGS), optimizer=optim.SGD(ARGS["learning_rate"]), report=lambda m: None)
    b, _ = _model(*setup)
    train_data_parallel(b, ds, TrainingArgs(**ARGS), optimizer=optim.SGD(ARGS["learning_rate"]),
                        report=lambda m: None)
    for (k, x), (_, y) in zip(tree_flatten(a.trainable_parameters()), tree_flatten(b.trainable_parameters())):
        np.testing.assert_allclose(np.array(x), np.array(y), atol=TOL)


def test_two_processes_equal_one(setup, tmp_path):
    model_dir, data = setup
    try:
        from mlx._distributed_utils import launch  # noqa: F401  (what the mlx.launch script runs)
    except ImportError:
        pytest.skip("this MLX has no mlx.launch")
    root = Path(mlx_synapse.__file__).resolve().parents[1]
    out = tmp_path / "dp"
    cmd = [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())",
           "--backend", "ring", "-n", "2", "--python", sys.executable, "--cwd", str(root), "--",
           "-m", "mlx_synapse.learn.distributed", "--model", str(model_dir), "--data", str(data),
           "--adapter-path", str(out), "--num-layers", "-1", "--rank", "4", "--scale", "2.0",
           "--iters", str(ARGS["iters"]), "--batch-size", str(ARGS["batch_size"]),
           "--learning-rate", str(ARGS["learning_rate"]), "--seed", str(ARGS["seed"]), "--steps-per-report", "1",
           "--optimizer", "sgd"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert "data-parallel over 2 processes" in log and "over 2 processes" in log.split("step 1:")[1]
    # the same steps in one process with the trainer
    model, ds = _model(model_dir, data)
    init = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    train(model, ds, TrainingArgs(**ARGS), optimizer=optim.SGD(ARGS["learning_rate"]), report=lambda m: None)
    save_adapter(model, tmp_path / "single")
    _, dp = read_adapter(out)
    _, single = read_adapter(tmp_path / "single")
    assert set(dp) == set(single) == set(init)
    moved = max(np.abs(np.array(single[k]) - init[k]).max() for k in init)
    assert moved > 100 * TOL  # training moved the adapter far more than the tolerance
    for k in single:
        np.testing.assert_allclose(np.array(dp[k]), np.array(single[k]), atol=TOL, err_msg=k)
