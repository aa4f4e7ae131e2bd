"""Tokenization on a tiny Llama-2-style tokenizer: masking token by token, BOS/EOS, the prefix
property, over-length policies, pieces tokenized in parallel, the cache and its invalidation, and
the legacy pitfall."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmft.data import tokenize as tokenize_module
from llmft.data.samples import generate_rows
from llmft.data.tokenize import (
    IGNORE_INDEX,
    cache_path,
    encode_examples,
    formatter_for,
    special_token_boundary_ok,
    table_stats,
    tokenize_split,
    tokenizer_fingerprint,
    tokenizer_threads,
)
from llmft.errors import LlmftError
from llmft.tasks import TASKS, get_task
from tests.support.tiny_tokenizer import (
    make_cfg,
    make_tokenizer,
    write_jsonl,
)

CHAT_ROW = {"messages": [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "How many hens?"},
    {"role": "assistant", "content": "3 hens", "weight": 0},
    {"role": "user", "content": "And eggs?"},
    {"role": "assistant", "content": "12 eggs"},
]}
PC_ROWS = [{"prompt": "How many players have a team of Giants?\n\n###\n\n", "completion": " SELECT COUNT(*)"},
           {"prompt": "Ava saves 22 dollars.\n\n###\n\n", "completion": " 176 dollars"}]


def _rows(task: str) -> list[dict]:
    if task == "chat":
        return [CHAT_ROW]
    if task == "prompt_completion":
        return PC_ROWS
    return generate_rows(task, "valid")[:50]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def _encode(tokenizer, task_name: str, rows: list[dict], train_on_prompt: bool = False):
    task = get_task(task_name)
    formatter = formatter_for(task, tokenizer)
    examples = [formatter(r) for r in rows]
    enc = encode_examples(examples, tokenizer, task=task, train_on_prompt=train_on_prompt)
    return examples, [(enc.ids[a:b].tolist(), enc.labels[a:b].tolist())
                      for a, b in zip(enc.offsets[:-1], enc.offsets[1:])], enc


@pytest.mark.parametrize("task", sorted(TASKS))
def test_prompt_tokens_are_a_prefix_of_the_full_tokens(tiny_tokenizer, task):
    examples, encoded, _ = _encode(tiny_tokenizer, task, _rows(task))
    for example, (ids, labels) in zip(examples, encoded):
        prompt_ids = _ids(tiny_tokenizer, example.prompt)
        assert ids[:len(prompt_ids)] == prompt_ids, example.prompt
        # ...and the first trained token is the one right after the prompt.
        first_trained = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        if task != "chat":  # chat trains earlier assistant turns too (here: weight 0, so the same)
            assert first_trained == len(prompt_ids)


@pytest.mark.parametrize("task", ["viggo", "sql", "gsm8k"])
def test_labels_token_by_token(tiny_tokenizer, task):
    examples, encoded, enc = _encode(tiny_tokenizer, task, _rows(task)[:5])
    stop = get_task(task).stop_token
    for example, (ids, labels), prompt_length in zip(examples, encoded, enc.prompt_lengths):
        prompt_ids = _ids(tiny_tokenizer, example.prompt)
        assert ids[0] == tiny_tokenizer.bos_token_id
        assert prompt_length == len(prompt_ids)
        assert labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        assert labels[len(prompt_ids):] == ids[len(prompt_ids):]
        assert ids[-1] == tiny_tokenizer.convert_tokens_to_ids(stop)  # trained stop token, no extra EOS
        completion = tiny_tokenizer.decode(ids[len(prompt_ids):-1], skip_special_tokens=False)
        assert completion.strip() == example.reference


def test_prompt_completion_gets_a_trained_eos(tiny_tokenizer):
    examples, encoded, _ = _encode(tiny_tokenizer, "prompt_completion", PC_ROWS)
    for example, (ids, labels) in zip(examples, encoded):
        assert ids[0] == tiny_tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
        assert ids[-1] == labels[-1] == tiny_tokenizer.eos_token_id
        n_prompt = len(_ids(tiny_tokenizer, example.prompt))
        assert all(label == IGNORE_INDEX for label in labels[:n_prompt])
        assert all(label != IGNORE_INDEX for label in labels[n_prompt:])


def test_train_on_prompt_trains_everything_but_the_first_token(tiny_tokenizer):
    _, encoded, _ = _encode(tiny_tokenizer, "viggo", _rows("viggo")[:3], train_on_prompt=True)
    for ids, labels in encoded:
        assert labels[0] == IGNORE_INDEX and labels[1:] == ids[1:]


def _trained_text(tokenizer, ids, labels):
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    if current:
        runs.append(tokenizer.decode(current, skip_special_tokens=False))
    return runs


def test_chat_masks_everything_but_weighted_assistant_turns(tiny_tokenizer):
    _, [(ids, labels)], _ = _encode(tiny_tokenizer, "chat", [CHAT_ROW])
    assert [t.strip() for t in _trained_text(tiny_tokenizer, ids, labels)] == ["12 eggs<|im_end|>"]
    unweighted = {"messages": [{k: v for k, v in m.items() if k != "weight"} for m in CHAT_ROW["messages"]]}
    _, [(ids, labels)], _ = _encode(tiny_tokenizer, "chat", [unweighted])
    assert [t.strip() for t in _trained_text(tiny_tokenizer, ids, labels)] == ["3 hens<|im_end|>", "12 eggs<|im_end|>"]


CHATML_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_uses_the_tokenizers_template_when_it_has_one():
    tokenizer = make_tokenizer(chat_template=CHATML_TEMPLATE)
    examples, [(ids, labels)], _ = _encode(tokenizer, "chat", [CHAT_ROW])
    assert examples[0].prompt.startswith("<s><|im_start|>system\n")
    assert ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, none added on top
    assert [t.strip() for t in _trained_text(tokenizer, ids, labels)] == ["12 eggs<|im_end|>"]


def test_legacy_pitfall_text_after_special_tokens_tokenizes_as_bare_text(tiny_tokenizer):
    # Llama-2's tokenizer (legacy): `<TOKEN>word` -> <TOKEN>, ▁word, exactly as bare `word`.
    # The tokenizer must be loaded with legacy=True (Metaspace prepend_scheme "always"); the
    # formats put no space after a marker, so the text after it starts as a sentence would.
    special = sorted({t for task in TASKS.values() for t in task.special_tokens})
    for token in special:
        for word in ("word", "SELECT", "give_opinion(name[x])", "12"):
            assert special_token_boundary_ok(tiny_tokenizer, token, word), (token, word)
    bare = _ids(tiny_tokenizer, "word")[1:]
    joined = _ids(tiny_tokenizer, "<START_A>word")[1:]
    assert joined == [tiny_tokenizer.convert_tokens_to_ids("<START_A>")] + bare


def test_legacy_check_fails_for_a_non_legacy_tokenizer():
    from transformers import LlamaTokenizer

    from tests.support.tiny_tokenizer import tiny_spm_dir

    tokenizer = LlamaTokenizer.from_pretrained(str(tiny_spm_dir()), legacy=False)
    tokenizer.add_tokens(["<START_A>"], special_tokens=True)
    assert not special_token_boundary_ok(tokenizer, "<START_A>", "word")


# ------------------------------------------------------------------ tokenize_split: policies and cache


def _pc_cfg(tmp_path, rows, **data):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    return make_cfg(tmp_path, "prompt_completion", str(path), **data)


LONG = {"prompt": "word " * 30 + "\n\n###\n\n", "completion": " the answer is here"}


def test_table_columns(tmp_path, tiny_tokenizer):
    cfg = make_cfg(tmp_path, "sql", "sample:sql@train", max_length=256)
    table = tokenize_split(cfg, tiny_tokenizer, "train")
    assert table.column_names == ["input_ids", "labels", "num_trained", "length", "prompt_length",
                                  "prompt", "reference", "row_index"]
    assert str(table.schema.field("input_ids").type) == "list<item: int32>"
    first = table.slice(0, 1).to_pylist()[0]
    assert first["length"] == len(first["input_ids"]) == len(first["labels"])
    assert first["num_trained"] == sum(label != IGNORE_INDEX for label in first["labels"])
    assert first["reference"] == generate_rows("sql", "train")[0]["answer"]
    assert table.column("row_index").to_pylist() == list(range(3000))


def test_over_length_drop(tmp_path, tiny_tokenizer):
    table = tokenize_split(_pc_cfg(tmp_path, [PC_ROWS[0], LONG, PC_ROWS[1]], max_length=40), tiny_tokenizer, "train")
    assert table.column("row_index").to_pylist() == [0, 2]
    assert table_stats(table)["dropped_over_length"] == 1


def test_over_length_truncate_keeps_the_prompt_and_cuts_the_completion(tmp_path, tiny_tokenizer):
    short_prompt = {"prompt": "Q?\n\n###\n\n", "completion": " word" * 40}
    cfg = _pc_cfg(tmp_path, [short_prompt, LONG], max_length=24, over_length="truncate")
    table = tokenize_split(cfg, tiny_tokenizer, "train")
    # LONG's prompt alone fills max_length: nothing of it would be trained, so it is dropped.
    assert table.column("row_index").to_pylist() == [0]
    assert table.column("length").to_pylist() == [24]
    labels = table.column("labels").to_pylist()[0]
    assert labels[-1] != IGNORE_INDEX and labels[-1] != tiny_tokenizer.eos_token_id  # cut before EOS
    assert table_stats(table)["truncated"] == 2 and table_stats(table)["dropped_untrained"] == 1


def test_over_length_error_names_split_source_and_row(tmp_path, tiny_tokenizer):
    cfg = _pc_cfg(tmp_path, [PC_ROWS[0], LONG], max_length=40, over_length="error")
    with pytest.raises(LlmftError, match=r"data\.train .*train\.jsonl\): 1 of 2 .*train\.jsonl line 2 \(\d+ tokens\)"):
        tokenize_split(cfg, tiny_tokenizer, "train")
    assert not (tmp_path / "cache" / "tokenized").exists() or not any((tmp_path / "cache" / "tokenized").iterdir())


def test_cache_is_reused(tmp_path, tiny_tokenizer, monkeypatch):
    cfg = _pc_cfg(tmp_path, PC_ROWS)
    first = tokenize_split(cfg, tiny_tokenizer, "train")
    path = cache_path(cfg, tiny_tokenizer, "train")
    assert path.is_dir() and list(path.glob("part-*.parquet"))

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized although the cache is current")

    monkeypatch.setattr(tokenize_module, "encode_examples", fail)
    assert tokenize_split(cfg, tiny_tokenizer, "train").equals(first)


def test_cache_is_rebuilt_when_the_data_changes(tmp_path, tiny_tokenizer):
    cfg = _pc_cfg(tmp_path, PC_ROWS)
    before = cache_path(cfg, tiny_tokenizer, "train")
    tokenize_split(cfg, tiny_tokenizer, "train")
    write_jsonl(tmp_path / "train.jsonl", PC_ROWS + [PC_ROWS[0]])
    assert cache_path(cfg, tiny_tokenizer, "train") != before
    assert tokenize_split(cfg, tiny_tokenizer, "train").num_rows == 3


def test_cache_is_rebuilt_when_the_tokenizer_or_settings_change(tmp_path):
    tokenizer = make_tokenizer()
    cfg = _pc_cfg(tmp_path, PC_ROWS)
    before = cache_path(cfg, tokenizer, "train")
    tokenize_split(cfg, tokenizer, "train")
    tokenizer.add_tokens(["<NEW>"], special_tokens=True)
    assert cache_path(cfg, tokenizer, "train") != before
    assert cache_path(cfg, make_tokenizer(), "train") == before  # same files, same key
    for change in ({"max_length": 64}, {"train_on_prompt": True}, {"over_length": "truncate"}):
        assert cache_path(_pc_cfg(tmp_path, PC_ROWS, **change), make_tokenizer(), "train") != before


def test_malformed_rows_stop_tokenizing_and_write_nothing(tmp_path, tiny_tokenizer):
    cfg = _pc_cfg(tmp_path, [PC_ROWS[0], PC_ROWS[1], "{oops", PC_ROWS[0]])
    with pytest.raises(LlmftError, match="line 3"):
        tokenize_split(cfg, tiny_tokenizer, "train")
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ pieces in parallel, cache hits


def _many_pc_rows(count: int) -> list[dict]:
    return [{"prompt": f"Question {i}: how many {'apples ' * (i % 7)}are there?\n\n###\n\n",
             "completion": f" {i * 3} apples"} for i in range(count)]


def _small_pieces(monkeypatch) -> None:
    """From now on splits of a few KB go to a process pool in pieces of about 2 KB (or 40 rows)."""
    monkeypatch.setattr(tokenize_module, "SMALL_SPLIT_BYTES", 1)
    monkeypatch.setattr(tokenize_module, "PIECE_BYTES", 2048)
    monkeypatch.setattr(tokenize_module, "SMALL_SPLIT_ROWS", 1)
    monkeypatch.setattr(tokenize_module, "PIECE_ROWS", 40)


def test_pieces_tokenized_in_parallel_give_the_table_of_one_pass(tmp_path, tiny_tokenizer, monkeypatch):
    """Fails if pieces lose, repeat or reorder rows at their edges, or number row_index per piece."""
    rows = _many_pc_rows(300)
    rows[150] = {"prompt": "word " * 150 + "\n\n###\n\n", "completion": " long"}  # dropped: over length
    path = write_jsonl(tmp_path / "train.jsonl", rows[:100] + [""] + rows[100:])  # a blank line 101
    one = tokenize_split(make_cfg(tmp_path / "one", "prompt_completion", str(path), max_length=128),
                         tiny_tokenizer, "train")
    assert len(list(cache_path(make_cfg(tmp_path / "one", "prompt_completion", str(path), max_length=128),
                               tiny_tokenizer, "train").glob("part-*.parquet"))) == 1
    _small_pieces(monkeypatch)
    cfg = make_cfg(tmp_path / "pool", "prompt_completion", str(path), max_length=128, tokenize_processes=2)
    pooled = tokenize_split(cfg, tiny_tokenizer, "train")
    shards = list(cache_path(cfg, tiny_tokenizer, "train").glob("part-*.parquet"))
    assert len(shards) > 4
    assert pooled.equals(one) and table_stats(pooled) == table_stats(one)
    assert pooled.column("row_index").to_pylist() == [i for i in range(300) if i != 150]
    assert table_stats(pooled)["over_length_rows"] == [f"{path} line 152"]
    assert tokenize_split(cfg, tiny_tokenizer, "train").equals(one)  # the cache hit, from the shards


def test_rows_held_in_memory_are_cut_into_pieces_too(tmp_path, tiny_tokenizer, monkeypatch):
    """Also fails if the pieces are not whole rounds of one per process: 200 rows in pieces of at
    most 40 make 6 shards for 2 processes (5 would leave one process a piece of its own to do last)."""
    one = tokenize_split(make_cfg(tmp_path / "one", "viggo", "sample:viggo@valid", max_length=256),
                         tiny_tokenizer, "train")
    _small_pieces(monkeypatch)
    cfg = make_cfg(tmp_path, "viggo", "sample:viggo@valid", max_length=256, tokenize_processes=2)
    pooled = tokenize_split(cfg, tiny_tokenizer, "train")
    assert len(list(cache_path(cfg, tiny_tokenizer, "train").glob("part-*.parquet"))) == 6
    assert pooled.equals(one) and pooled.column("row_index").to_pylist() == list(range(200))


def test_user_errors_in_a_later_piece_name_their_line_and_write_nothing(tmp_path, tiny_tokenizer, monkeypatch):
    _small_pieces(monkeypatch)
    rows = _many_pc_rows(200)
    bad = write_jsonl(tmp_path / "bad.jsonl", rows[:170] + [{"prompt": "x"}] + rows[170:] + ["{oops"])
    with pytest.raises(LlmftError, match=r"2 malformed row\(s\): .*bad\.jsonl line 202: invalid JSON.*"
                                         r"bad\.jsonl line 171: missing field `completion`"):
        tokenize_split(make_cfg(tmp_path, "prompt_completion", str(bad), tokenize_processes=2), tiny_tokenizer, "train")
    long = dict(rows[0], prompt="word " * 150 + "\n\n###\n\n")
    over = write_jsonl(tmp_path / "over.jsonl", rows[:180] + [long] + rows[180:])
    cfg = make_cfg(tmp_path, "prompt_completion", str(over), max_length=128, over_length="error", tokenize_processes=2)
    with pytest.raises(LlmftError, match=r"1 of 201 examples are longer than .*over\.jsonl line 181 \(\d+ tokens\)"):
        tokenize_split(cfg, tiny_tokenizer, "train")
    assert not (tmp_path / "cache").exists()


def test_a_cache_hit_imports_neither_pandas_nor_pyarrow_dataset(tmp_path, tiny_tokenizer):
    """Fails if reading the cache goes through pq.read_table, which imports both (0.4 s of a
    first cache hit in a new process)."""
    cfg = make_cfg(tmp_path, "viggo", "sample:viggo@valid", max_length=256)
    tokenize_split(cfg, tiny_tokenizer, "train")
    folder = cache_path(cfg, tiny_tokenizer, "train")
    code = ("import sys; from pathlib import Path; from llmft.data.tokenize import read_cached; "
            f"t = read_cached(Path({str(folder)!r})); assert t.num_rows == 200; "
            "print(sorted(m for m in ('pandas', 'pyarrow.dataset') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_tokenizer_fingerprint_ignores_call_time_padding_and_truncation():
    tokenizer = make_tokenizer()
    before = tokenizer_fingerprint(tokenizer)
    tokenizer.backend_tokenizer.enable_padding(length=64)
    tokenizer.backend_tokenizer.enable_truncation(max_length=32)
    assert tokenizer_fingerprint(tokenizer) == before
    tokenizer.add_tokens(["<NEW>"], special_tokens=True)
    assert tokenizer_fingerprint(tokenizer) != before


@pytest.mark.parametrize("before", [None, "false", "true"])
def test_tokenizer_threads_are_switched_for_the_block_and_put_back(before, monkeypatch):
    import os

    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    for on in (False, True):
        with tokenizer_threads(on):
            assert os.environ["TOKENIZERS_PARALLELISM"] == ("true" if on else "false")
        assert os.environ.get("TOKENIZERS_PARALLELISM") == before
