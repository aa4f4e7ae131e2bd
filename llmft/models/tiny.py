"""A tiny random Llama with a Llama-2-style sentencepiece tokenizer (`llmft models make-tiny`),
for CPU tests and the tiny configs."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from llmft.errors import LlmftError
from llmft.files import atomic_folder



# Every ASCII symbol, in case the samples lack some (SQL operators and the like).
_ASCII_SYMBOLS = "0 1 2 3 4 5 6 7 8 9 + - * / % ( ) [ ] { } , . : ; ? ! ' \" _ # $ @ & | ^ ~ ` < > = <> >= <="
_ROWS_PER_TASK = 3000  # enough for a stable vocabulary; trains in about a second


def _tokenizer_training_text() -> list[str]:
    """Text for the tiny tokenizer: the values of llmft's synthetic sample rows for every task that has them."""
    from llmft.data.samples import generate_rows, sample_tasks

    lines: list[str] = []
    for task in sample_tasks():
        for row in generate_rows(task, "train")[:_ROWS_PER_TASK]:
            for key, value in row.items():
                if key.endswith("id"):  # row ids (gem_id) are not text the model will see
                    continue
                values = value if isinstance(value, list) else [value]
                lines.extend(text for text in values if isinstance(text, str) and text)
    return lines + [_ASCII_SYMBOLS]


def make_tiny_llama(out: str | Path, num_layers: int = 2, hidden_size: int = 64,
                    vocab_size: int = 2048, seed: int = 0) -> Path:
    """Write a small random `LlamaForCausalLM` and its Llama-2-style tokenizer into `out`.

    The tokenizer is a sentencepiece BPE model with byte fallback and single-digit pieces (as
    Llama-2's), `<unk>`/`<s>`/`</s>` at ids 0/1/2, a BOS added to every sequence and Llama-2's
    "legacy" treatment of text after special tokens. It is trained on llmft's sample data for
    the three tasks. The same arguments always give byte-identical weights. Replaces `out`.

    Vocabulary: byte fallback takes 259 ids, so 512 leaves few merges: 40% of the sample ViGGO
    examples then exceed 128 tokens (the tiny config's max_length); with 2048 none do (median
    50 tokens instead of 120), and the model stays tiny.
    """
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    if vocab_size < 300:
        raise LlmftError(f"vocab_size {vocab_size} is too small: byte fallback alone takes 259 ids. Use 384 or more.")
    if hidden_size % 16:
        raise LlmftError(f"hidden_size {hidden_size} must be a multiple of 16 (heads of 16 dimensions).")
    out = Path(out).expanduser()
    with atomic_folder(out) as tmp:
        model_file = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_tokenizer_training_text()), model_writer=model_file,
            model_type="bpe", vocab_size=vocab_size, byte_fallback=True, split_digits=True,
            character_coverage=1.0, num_threads=1,  # one thread: deterministic merges
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
            allow_whitespace_only_pieces=True, max_sentence_length=1 << 20, minloglevel=2)
        spm_dir = tmp / "sentencepiece"
        spm_dir.mkdir()
        (spm_dir / "tokenizer.model").write_bytes(model_file.getvalue())
        max_positions = 2048
        # from_pretrained converts the .model file into the fast Llama tokenizer. legacy=True as in
        # Llama-2: text after a special token gets the word-start marker, like text after a space.
        tokenizer = LlamaTokenizer.from_pretrained(spm_dir, legacy=True, add_bos_token=True,
                                                   add_eos_token=False, model_max_length=max_positions)
        # Saved explicitly, or a reload falls back to the non-legacy default.
        tokenizer.init_kwargs.update(legacy=True, add_bos_token=True, add_eos_token=False)
        tokenizer.init_kwargs.pop("vocab_file", None)
        tokenizer.save_pretrained(tmp)
        shutil.move(spm_dir / "tokenizer.model", tmp / "tokenizer.model")
        spm_dir.rmdir()

        heads = hidden_size // 16
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 8 // 3 // 16 * 16,
            num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=max_positions, tie_word_embeddings=False,  # untied like Llama-2
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
            initializer_range=0.02, dtype="float32")
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp, safe_serialization=True)
    return out

