"""A tiny Llama-2-style sentencepiece tokenizer for tests, trained in a temp dir in ~0.1 s.

The sentencepiece model mimics Llama-2's settings (BPE, byte fallback, split digits, identity
normalisation, a dummy prefix) and is loaded the way a real Llama-2 checkpoint is:
`LlamaTokenizer.from_pretrained(folder_with_tokenizer.model, legacy=True)`, which converts it to
a fast (HF tokenizers) tokenizer that adds BOS and prefixes every text piece with "▁", also
after a special token (Metaspace prepend_scheme "always"). That is what makes `<TOKEN>word`
tokenize `word` as bare `word` does (the Llama "legacy" pitfall; see test_tokenize.py).

Use `make_tokenizer()` for a fresh tokenizer you may change, and the `tiny_tokenizer` fixture
(session-scoped, do not mutate) otherwise.
"""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import tempfile
from pathlib import Path

import pytest

VOCAB_SIZE = 800


@functools.lru_cache(maxsize=1)
def tiny_spm_dir() -> Path:
    import sentencepiece as spm

    from llmft.data.samples import generate_rows

    lines = []
    for row in generate_rows("viggo", "train")[:1500]:
        lines += [row["target"], row["meaning_representation"]]
    for row in generate_rows("sql", "train")[:800]:
        lines += [row["question"], row["context"], row["answer"]]
    for row in generate_rows("gsm8k", "train")[:600]:
        lines += [row["question"], row["answer"].replace("\n", " ")]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=VOCAB_SIZE, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1,
    )
    folder = Path(tempfile.mkdtemp(prefix="llmft-tiny-spm-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    return folder


def make_tokenizer(special_tokens: tuple[str, ...] | None = None, chat_template: str | None = None):
    """A fresh tiny Llama tokenizer with the special tokens of every task added (or `special_tokens`)."""
    from transformers import LlamaTokenizer

    from llmft.tasks import TASKS

    tokenizer = LlamaTokenizer.from_pretrained(str(tiny_spm_dir()), legacy=True, add_bos_token=True)
    if special_tokens is None:
        special_tokens = tuple(dict.fromkeys(t for task in TASKS.values() for t in task.special_tokens))
    tokenizer.add_tokens(list(special_tokens), special_tokens=True)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


def make_cfg(tmp_path: Path, task: str, train: str, valid: str | None = None, test: str | None = None, **data):
    """A Config whose data section is given (the model is never loaded in these tests)."""
    from llmft.config import Config

    section = {"task": task, "train": train, "valid": valid, "test": test,
               "cache_dir": str(tmp_path / "cache"), **data}
    return Config.model_validate({"model": {"name_or_path": "unused"}, "data": section,
                                  "training": {"global_batch_size": 4}})


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSONL; a str row is written verbatim (for broken lines)."""
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
