"""The task's word-level tokenizer, so TransformerLens' string utilities work on our models.

A prompt is written as its token ids separated by spaces ("23 1 2 43 46 74 54 44 72"); the
tokenizer's words are the task's ids "0" .. "vocab_size-1", each mapped to itself. It is a
Hugging Face `PreTrainedTokenizerFast` over a `tokenizers` WordLevel model, saved with every
checkpoint as `tokenizer.json` (loads without this package too:
`PreTrainedTokenizerFast(tokenizer_file=".../tokenizer.json")`).

No BOS: the models were trained on 9-token prompts without one, so the tokenizer has none
and models.hooked sets `default_prepend_bos = False`; `prepend_bos=True` is refused with
a one-line error (TransformerLens tries the placeholder BOS it sets up, which is no word). Every id is a word, so the first id the task never uses (0 by
default: no anchor, key, noise or answer) doubles as the unknown and padding token, which
TransformerLens needs to set a tokenizer up (4.x probes it with the word "a").

A word outside the vocabulary given to the tokenizer (`tokenizer(text)`, which `to_tokens`,
`model(text)` and `test_prompt` call) is refused with the same error as a bad token id
(`AnchorTask.vocabulary_error`), not turned into the unknown token.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from models.task import AnchorTask

TOKENIZER_FILE = "tokenizer.json"


def unused_id(task: AnchorTask) -> int | None:
    """The smallest id no prompt or answer of the task uses, or None."""
    used = set(task.anchors) | set(range(task.key_min, task.key_max + 1))
    for a1, a2 in task.pairs:
        for shift in {task.label_shift(a1, a2), task.composite_shift(a1, a2)}:
            used |= set(range(task.key_min + shift, task.key_max + shift + 1))
    return next((i for i in range(task.vocab_size) if i not in used), None)


class AnchorTokenizer(PreTrainedTokenizerFast):
    """PreTrainedTokenizerFast that refuses words outside the task's vocabulary with the
    task's own error, instead of reading them as the unknown token."""

    def __init__(self, *args, task: AnchorTask = AnchorTask(), **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task

    def __call__(self, text=None, *args, **kwargs):
        texts = [text] if isinstance(text, str) else text
        if isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts):
            vocab = self.get_vocab()
            for row, prompt in enumerate(texts):
                for position, word in enumerate(prompt.split()):
                    if word not in vocab:
                        raise self._unknown(word, position, row)
        return super().__call__(text, *args, **kwargs)

    def _unknown(self, word: str, position: int, row: int) -> ValueError:
        if self.bos_token and word.startswith(self.bos_token):  # TransformerLens prepends BOS as a string
            return ValueError(f"the anchor task has no BOS token (its models read {self.task.seq_len}-token prompts "
                              "without one): tokenize with prepend_bos=False")
        return self.task.vocabulary_error(word, position, row)


def _word_level(task: AnchorTask, spare: int | None) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({str(i): i for i in range(task.vocab_size)}, unk_token=None if spare is None else str(spare)))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def _wrap(tokenizer: Tokenizer, task: AnchorTask, spare: int | None) -> AnchorTokenizer:
    spare_word = None if spare is None else str(spare)
    return AnchorTokenizer(tokenizer_object=tokenizer, task=task, unk_token=spare_word, pad_token=spare_word,
                           clean_up_tokenization_spaces=False)


def task_tokenizer(task: AnchorTask = AnchorTask()) -> AnchorTokenizer:
    """The word-level tokenizer of `task`'s vocabulary."""
    spare = unused_id(task)  # the unknown and pad word
    return _wrap(_word_level(task, spare), task, spare)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | os.PathLike) -> None:
    Path(path).write_text(tokenizer.backend_tokenizer.to_str(pretty=True))


def load_tokenizer(path: str | os.PathLike, task: AnchorTask) -> AnchorTokenizer:
    return _wrap(Tokenizer.from_file(str(path)), task, unused_id(task))
