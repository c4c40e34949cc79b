"""ContinualLearner: learn_from_text lowers the loss on the new text, fills the replay buffer, EWC hooks in."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
from mlx.utils import tree_flatten  # noqa: E402

from mlx_synapse.learn import load_trainable  # noqa: E402
from mlx_synapse.learn.learner import ContinualLearner  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", bits=4, seed=9, tokenizer_from=smollm2_dir)


def test_learn_from_text_replay_ewc_and_checkpoint(tiny, tmp_path):
    model, tok = load_trainable(tiny)
    learner = ContinualLearner(model, tok, rank=4, num_layers=-1, scale=2.0, steps=6, batch_size=2,
                               learning_rate=1e-2, replay_share=0.5, ewc_lambda=1.0)
    r1 = learner.learn_from_text(["Zorblat's hat is teal.", "Quimby lives in Marrowfield."], domain="a")
    assert r1["loss_after"] < r1["loss_before"] - 1.0, r1
    assert r1["replayed"] == 0 and learner.buffer.domains() == {"a": 2}
    learner.consolidate("a")
    assert learner.ewc.fisher is not None and all(float(mx.sum(v).item()) > 0 for v in learner.ewc.fisher.values())
    r2 = learner.learn_from_text("Trell collects brass keys.", domain="b")
    assert r2["replayed"] == 1  # one new example, share 0.5: one replayed
    assert learner.buffer.domains() == {"a": 2, "b": 1}
    assert learner.ewc.penalty(model).item() > 0  # training moved away from the anchor under the penalty
    learner.save(tmp_path / "ck")
    fresh, _ = load_trainable(tiny)
    restored = ContinualLearner.load(tmp_path / "ck", fresh, tok)
    tokens = mx.array([tok.encode("Trell collects brass keys.")])
    np.testing.assert_array_equal(np.array(fresh(tokens)), np.array(model(tokens)))
    assert restored.buffer.domains() == {"a": 2, "b": 1}
    np.testing.assert_allclose(restored.ewc.penalty(fresh).item(), learner.ewc.penalty(model).item(), rtol=1e-6)
    assert len(tree_flatten(fresh.trainable_parameters())) == len(tree_flatten(model.trainable_parameters()))
    with pytest.raises(ValueError, match="non-empty text"):
        learner.learn_from_text("")
