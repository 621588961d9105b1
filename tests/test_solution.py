"""The solution classifier, on models built to give a known answer."""

import pytest
import torch

import models
from models import hooked
from models.task import AnchorTask
from probes.solution import classify, label_of, predict

TASK = AnchorTask()


def answering_model(solution: str, task: AnchorTask = TASK, wrong_at_key_pos: int | None = None):
    """A model whose last-position argmax is, by construction, the trained label
    on trained pairs and `solution`'s answer on the held-out pair. The residual stream after
    the only block is overwritten with a one-hot of the answer, and W_U is the identity."""
    cfg = hooked.hooked_config(task, n_layers=1, d_model=256, d_head=4, d_mlp=4, normalization_type=None)
    model = hooked.from_config(cfg)
    with torch.no_grad():
        model.unembed.W_U.zero_()
        model.unembed.W_U[: task.vocab_size, :].copy_(torch.eye(task.vocab_size))
    seen = {}

    def keep_tokens(embed, args):  # a torch pre-hook on the embedding: 4.x's bridge has no hook_tokens
        seen["tokens"] = args[0]

    def write_answer(resid, hook):
        batch = task.prompts(seen["tokens"])
        held = (batch.anchor1 == task.held_out_pair[0]) & (batch.anchor2 == task.held_out_pair[1])
        answer = torch.where(held, task.solution_targets(batch)[solution], batch.label)
        if wrong_at_key_pos is not None:
            answer = torch.where(held & (batch.key_pos == wrong_at_key_pos), batch.key, answer)
        resid = torch.zeros_like(resid)
        resid[torch.arange(len(answer)), -1, answer] = 10.0
        return resid

    model.embed.register_forward_pre_hook(keep_tokens)
    model.add_hook("blocks.0.hook_resid_post", write_answer, is_permanent=True)
    return model


def test_inferential_model_is_classified_inferential():
    result = classify(answering_model("inferential"))
    assert result.label == "inferential"
    assert result.seen_train_keys == 1.0 and result.seen_test_keys == 1.0
    assert result.inferential_test_keys == 1.0 and result.inferential_train_keys == 1.0
    assert result.symmetric_test_keys == 0.0
    assert set(result.offset_histogram) == {-10}
    assert result.inferential_by_position == [1.0] * 7


def test_symmetric_model_is_classified_symmetric():
    result = classify(answering_model("symmetric"))
    assert result.label == "symmetric"
    assert result.symmetric_test_keys == 1.0 and result.inferential_test_keys == 0.0
    assert set(result.offset_histogram) == {-6}


def test_per_position_accuracy_locates_a_mixed_model():
    result = classify(answering_model("symmetric", wrong_at_key_pos=6))
    assert result.symmetric_by_position == [1.0] * 6 + [0.0]
    assert result.symmetric_test_keys == pytest.approx(6 / 7, abs=0.03)
    assert result.offset_histogram[0] > 0


def test_untrained_model_is_unfit():
    result = classify(hooked.build(0.5, seed=0))
    assert result.label == "unfit"
    assert "solution            unfit" in str(result)


def test_label_rule():
    assert label_of(0.5, 1.0, 0.0) == "unfit"
    assert label_of(0.99, 0.6, 0.3) == "inferential"
    assert label_of(0.99, 0.3, 0.6) == "symmetric"
    assert label_of(0.99, 0.2, 0.2) == "other"


def test_classifier_refuses_a_model_for_another_task():
    with pytest.raises(ValueError, match="does not match the task"):
        classify(hooked.build(0.5, n_ctx=10))


@pytest.mark.parametrize("training", [True, False])
def test_classify_restores_the_train_eval_mode_when_it_raises(training):
    model = hooked.build(0.5, d_model=16, d_head=8, d_mlp=32)
    model.train(training)

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    model.blocks[0].hook_resid_post.add_hook(lambda resid, hook: fail())
    with pytest.raises(RuntimeError, match="boom"):
        classify(model)
    assert model.training is training


def test_predict_in_chunks_gives_each_prompt_the_same_logits():
    # predict evaluates 1024 prompts at a time (page faults): the chunk must not change a
    # prompt's logits, not even in the last bit.
    model = models.load("inferential")
    tokens = AnchorTask().sample(1536, torch.Generator().manual_seed(3)).tokens
    with torch.inference_mode():
        whole = model(tokens)[:, -1]
        chunked = torch.cat([model(chunk)[:, -1] for chunk in tokens.split(1024)])
    assert torch.equal(whole, chunked)
    assert torch.equal(predict(model, tokens), whole.argmax(-1))
