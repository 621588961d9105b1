"""The task's tokenizer: TransformerLens' string utilities work on every loaded model, on
either TransformerLens line, and a word outside the vocabulary gets the bad-token-id error."""

import contextlib
import io
import re

import pytest
import torch
from transformer_lens.utilities import test_prompt as tl_test_prompt  # 3.9 and 4.x both have it here
from transformers import PreTrainedTokenizerFast

import models
from models import hooked
from models.task import AnchorTask
from models.tokenizer import TOKENIZER_FILE, load_tokenizer, task_tokenizer, unused_id

PROMPT = "23 1 2 43 46 74 54 44 72"
IDS = [23, 1, 2, 43, 46, 74, 54, 44, 72]


@pytest.fixture(scope="module", params=["inferential", "built"])
def model(request):
    """A shipped model (its tokenizer.json) and a freshly built one (the task's tokenizer)."""
    return models.load("inferential") if request.param == "inferential" else models.build(0.8, seed=0)


def test_to_tokens_gives_the_ids_without_bos(model):
    assert model.to_tokens(PROMPT).tolist() == [IDS]
    assert model.to_str_tokens(PROMPT) == PROMPT.split()
    assert model.to_string(torch.tensor(IDS)) == PROMPT


def test_string_input_gives_the_same_logits_as_ids(model):
    with torch.inference_mode():
        assert torch.equal(model(PROMPT), model(torch.tensor([IDS])))


def test_transformer_lens_test_prompt_runs(model):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tl_test_prompt(PROMPT.rsplit(" ", 1)[0], "29", model)  # 23 + shift(1) + shift(2) = 29
    with torch.inference_mode():
        last = model(torch.tensor([IDS[:-1]]))[0, -1]  # [d_vocab]
    rank = int((last > last[29]).sum())
    assert "Tokenized answer: ['29']" in out.getvalue()
    assert f"Ranks of the answer tokens: [('29', {rank})]" in out.getvalue(), out.getvalue()


def test_a_word_outside_the_vocabulary_gets_the_bad_token_id_error(model):
    task = AnchorTask()
    with pytest.raises(ValueError, match="outside the vocabulary") as bad_id:
        task.prompts(torch.tensor([[23, 1, 2, 43, 999, 74, 54, 44, 72]]))
    with pytest.raises(ValueError) as bad_word:
        model.to_tokens("23 1 2 43 x 74 54 44 72")
    assert str(bad_word.value) == str(bad_id.value).replace("999", "'x'")
    with pytest.raises(ValueError, match=re.escape("token '201' at position 8 of prompt 0 is outside the vocabulary 0..200")):
        model("23 1 2 43 46 74 54 44 201")


def test_asking_for_bos_is_refused_clearly(model):
    with pytest.raises(ValueError, match="no BOS token"):
        model.to_tokens(PROMPT, prepend_bos=True)


@pytest.mark.parametrize("name", ["inferential", "symmetric"])
def test_shipped_tokenizer_is_the_tasks(name):
    path = hooked.resolve(name) / TOKENIZER_FILE
    task = hooked.task_of(name)
    assert load_tokenizer(path, task).backend_tokenizer.to_str() == task_tokenizer(task).backend_tokenizer.to_str()
    plain = PreTrainedTokenizerFast(tokenizer_file=str(path))  # without this package's class
    assert plain(PROMPT)["input_ids"] == IDS


def test_spare_id_is_one_the_task_never_uses():
    task = AnchorTask()
    spare = unused_id(task)
    assert spare == 0
    grid = task.grid(task.pairs, "any")
    assert not (grid.tokens == spare).any() and not (grid.label == spare).any()
