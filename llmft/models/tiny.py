"""Tiny random models of any architecture family (`llmft models make-tiny`), for CPU tests and smoke runs.

A tiny model is the target's own transformers config class with the sizes shrunk (a few layers,
hidden size 64, heads of 16 dimensions) and everything else kept: grouped-query attention
(kv heads stay fewer than query heads when the target has fewer), tied or untied embeddings,
sliding-window and per-layer attention types (every kind the target uses stays present), rotary
settings, biases, norms and soft-capping. The target is a transformers model type (`mistral`,
`qwen3`, `gemma2`, ...), a local model folder or config.json, or a hub id whose config llmft
ships (the Llama-2 sizes) or finds in the local cache.

The tokenizer is trained on llmft's sample data in the family's own style, so family-specific
tokenizer behaviour runs in the tests too (see `TOKENIZER_STYLES`): Llama-2's sentencepiece BPE
with BOS and "legacy" spacing, Phi-3's variant of it with chat markers, Gemma's sentencepiece
(pad/eos/bos/unk at 0-3) with its turn markers, and Qwen's byte-level BPE with no BOS and ChatML.
Or it is copied from a local tokenizer (`tokenizer_from`), e.g. the target's own.

The same arguments always give byte-identical files. `llmft_tiny.json` in the folder records
what the model was made from.
"""

from __future__ import annotations

import copy
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmft.errors import LlmftError
from llmft.files import atomic_folder

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

TINY_MARKER = "llmft_tiny.json"
HEAD_DIM = 16
# Short enough that the tiny configs' 128-token rows exercise the sliding-window path.
SLIDING_WINDOW = 64
MAX_EXPERTS = 4

# Every ASCII symbol, in case the samples lack some (SQL operators and the like).
_ASCII_SYMBOLS = "0 1 2 3 4 5 6 7 8 9 + - * / % ( ) [ ] { } , . : ; ? ! ' \" _ # $ @ & | ^ ~ ` < > = <> >= <="
_ROWS_PER_TASK = 3000  # enough for a stable vocabulary; trains in about a second


# ---------------------------------------------------------------- tokenizers

CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                   "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == "
                  "'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim "
                  "+ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}"
                  "{% endif %}")
PHI3_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
                 "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
                 "{{ eos_token }}{% endif %}")


@dataclass(frozen=True)
class TokenizerStyle:
    """How a family's released tokenizer behaves, reproduced at a small vocabulary."""

    name: str
    kind: Literal["sentencepiece", "byte_level"]
    tokenizer_class: str                  # the transformers class the family's checkpoints name
    specials: dict[str, str]              # role (bos/eos/unk/pad) -> token; a missing role has none
    extra_tokens: tuple[str, ...] = ()    # chat markers and the like, special and atomic
    add_bos: bool = True
    legacy: bool | None = None            # Llama-2's treatment of text after special tokens
    chat_template: str | None = None
    spm_ids: dict[str, int] = field(default_factory=dict)  # sentencepiece ids of bos/eos/unk/pad


TOKENIZER_STYLES = {
    "llama": TokenizerStyle("llama", "sentencepiece", "LlamaTokenizer",
                            {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}, legacy=True,
                            spm_ids={"unk": 0, "bos": 1, "eos": 2, "pad": -1}),
    "phi3": TokenizerStyle("phi3", "sentencepiece", "LlamaTokenizer",
                           {"unk": "<unk>", "bos": "<s>", "eos": "<|endoftext|>", "pad": "<|endoftext|>"},
                           extra_tokens=("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
                           add_bos=False, legacy=False, chat_template=PHI3_TEMPLATE,
                           spm_ids={"unk": 0, "bos": 1, "eos": 2, "pad": -1}),
    "gemma": TokenizerStyle("gemma", "sentencepiece", "GemmaTokenizer",
                            {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"},
                            extra_tokens=("<start_of_turn>", "<end_of_turn>"), chat_template=GEMMA_TEMPLATE,
                            spm_ids={"pad": 0, "eos": 1, "bos": 2, "unk": 3}),
    "qwen": TokenizerStyle("qwen", "byte_level", "Qwen2Tokenizer",
                           {"eos": "<|endoftext|>", "pad": "<|endoftext|>"},
                           extra_tokens=("<|im_start|>", "<|im_end|>"), add_bos=False, chat_template=CHATML_TEMPLATE),
}

# transformers model type -> tokenizer style of its released checkpoints. Others get Llama-2's.
FAMILY_TOKENIZERS = {
    "llama": "llama", "mistral": "llama", "mixtral": "llama", "phi3": "phi3",
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma",
    "qwen2": "qwen", "qwen2_moe": "qwen", "qwen3": "qwen", "qwen3_moe": "qwen",
}


@functools.lru_cache(maxsize=1)
def tokenizer_training_text() -> tuple[str, ...]:
    """Text for tiny tokenizers: the values of llmft's synthetic sample rows for every task that has them."""
    from llmft.data.samples import generate_rows, sample_tasks

    lines: list[str] = []
    for task in sample_tasks():
        for row in generate_rows(task, "train")[:_ROWS_PER_TASK]:
            for key, value in row.items():
                if key.endswith("id"):  # row ids (gem_id) are not text the model will see
                    continue
                values = value if isinstance(value, list) else [value]
                lines.extend(text for text in values if isinstance(text, str) and text)
    return tuple(lines + [_ASCII_SYMBOLS])


def make_tokenizer(style: TokenizerStyle, vocab_size: int, model_max_length: int) -> PreTrainedTokenizerBase:
    """A tokenizer in `style` trained on llmft's sample data, `vocab_size` entries before extra tokens."""
    if style.kind == "sentencepiece":
        tokenizer = _sentencepiece_tokenizer(style, vocab_size, model_max_length)
    else:
        tokenizer = _byte_level_tokenizer(style, vocab_size, model_max_length)
    if style.chat_template:
        tokenizer.chat_template = style.chat_template
    return tokenizer


def _sentencepiece_tokenizer(style: TokenizerStyle, vocab_size: int, model_max_length: int):
    """Trained the way the family's sentencepiece model was (BPE, byte fallback, single digits),
    then converted by transformers exactly as a released `tokenizer.model` is."""
    import tempfile

    import transformers

    with tempfile.TemporaryDirectory(prefix="llmft-spm-") as spm_dir:
        (Path(spm_dir) / "tokenizer.model").write_bytes(_sentencepiece_model(style.name, vocab_size))
        kwargs: dict[str, Any] = {"add_bos_token": style.add_bos, "add_eos_token": False,
                                  "model_max_length": model_max_length}
        if style.legacy is not None:
            kwargs["legacy"] = style.legacy
        tokenizer = getattr(transformers, style.tokenizer_class).from_pretrained(spm_dir, **kwargs)
    if style.extra_tokens:
        tokenizer.add_tokens(list(style.extra_tokens), special_tokens=True)
    for role in ("eos", "pad"):  # roles given to tokens added above (Phi-3's <|endoftext|>)
        if role in style.specials and style.specials[role] != getattr(tokenizer, f"{role}_token"):
            setattr(tokenizer, f"{role}_token", style.specials[role])
    # Saved explicitly, or a reload falls back to the class defaults (transformers 5 does not
    # write `legacy` and `add_bos_token` back by itself).
    tokenizer.init_kwargs.update(kwargs)
    tokenizer.init_kwargs.pop("vocab_file", None)
    tokenizer.init_kwargs.pop("model_max_length", None)
    return tokenizer


@functools.lru_cache(maxsize=8)
def _sentencepiece_model(style_name: str, vocab_size: int) -> bytes:
    """The trained sentencepiece model file (cached: several families share a style)."""
    import sentencepiece as spm

    if vocab_size < 300:
        raise LlmftError(f"vocab_size {vocab_size} is too small: byte fallback alone takes 259 ids. Use 384 or more.")
    style = TOKENIZER_STYLES[style_name]
    ids, specials = style.spm_ids, style.specials
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_training_text()), model_writer=model_file,
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, split_digits=True,
        character_coverage=1.0, num_threads=1,  # one thread: deterministic merges
        **{f"{role}_id": ids[role] for role in ("unk", "bos", "eos", "pad")},
        **{f"{role}_piece": specials[role] for role in ("unk", "bos", "eos", "pad") if ids[role] >= 0},
        add_dummy_prefix=style.name != "gemma",  # Gemma's model splits on spaces without a prefix
        remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, max_sentence_length=1 << 20, minloglevel=2)
    return model_file.getvalue()


def _byte_level_tokenizer(style: TokenizerStyle, vocab_size: int, model_max_length: int):
    """The family's tokenizer pipeline (normaliser, pre-tokeniser, byte-level decoder) with a BPE
    vocabulary trained anew by transformers' `train_new_from_iterator`."""
    tokenizer = copy.deepcopy(_trained_byte_level(style.name, vocab_size))
    tokenizer.model_max_length = model_max_length
    return tokenizer


@functools.lru_cache(maxsize=4)
def _trained_byte_level(style_name: str, vocab_size: int):
    import transformers

    style = TOKENIZER_STYLES[style_name]
    base = getattr(transformers, style.tokenizer_class)(
        unk_token=style.specials.get("unk"), bos_token=style.specials.get("bos"),
        eos_token=style.specials["eos"], pad_token=style.specials.get("pad"))
    return base.train_new_from_iterator(iter(tokenizer_training_text()), vocab_size=vocab_size,
                                        new_special_tokens=list(style.extra_tokens))


# ---------------------------------------------------------------- model configs


def target_config(like: str, trust_remote_code: bool = False) -> tuple[dict[str, Any], str]:
    """The config.json (as a dict) of what a tiny model is made like, and where it came from.

    `like` is a transformers model type, a local model folder or config.json file, or a hub id
    (llmft's shipped Llama-2 configs, else transformers' local cache or the hub).
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    from llmft.models.architecture import load_model_config

    path = Path(like).expanduser()
    if path.is_file():
        try:
            return json.loads(path.read_text()), str(path)
        except json.JSONDecodeError as exc:
            raise LlmftError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}.") from None
    if not path.exists() and like in CONFIG_MAPPING:
        return AutoConfig.for_model(like).to_dict(), f"transformers' {type(AutoConfig.for_model(like)).__name__} defaults"
    return load_model_config(like, trust_remote_code)


def tiny_config(target: dict[str, Any], tokenizer: PreTrainedTokenizerBase, *, num_layers: int = 2,
                hidden_size: int = 64) -> PretrainedConfig:
    """`target` (a config.json dict) shrunk to `num_layers` layers of `hidden_size`, for `tokenizer`."""
    from transformers import CONFIG_MAPPING, AutoConfig

    if hidden_size % HEAD_DIM:
        raise LlmftError(f"hidden_size {hidden_size} must be a multiple of {HEAD_DIM} (heads of {HEAD_DIM} dimensions).")
    values = dict(target.get("text_config") or target)  # multimodal checkpoints: their language model
    model_type = values.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise LlmftError(f"Model type {model_type!r} is not one transformers ships, so llmft cannot build a tiny "
                         "model of it (models needing trust_remote_code are not supported here).")
    for key in ("_comment", "_name_or_path", "architectures", "auto_map", "quantization_config", "torch_dtype",
                "dtype", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id",
                "sliding_window_pattern", "model_type", "text_config", "vision_config"):
        values.pop(key, None)

    heads = hidden_size // HEAD_DIM
    target_heads = int(values.get("num_attention_heads") or heads)
    group = max(1, target_heads // int(values.get("num_key_value_heads") or target_heads))
    kv_heads = max(1, heads // group)
    while heads % kv_heads:
        kv_heads -= 1
    intermediate = hidden_size * 8 // 3 // 16 * 16
    values.update(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=HEAD_DIM,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=values.get("initializer_range") or 0.02, dtype="float32")
    if values.get("sliding_window"):
        values["sliding_window"] = min(int(values["sliding_window"]), SLIDING_WINDOW)
    if values.get("query_pre_attn_scalar"):  # Gemma-2/3 scale attention by this (the head size)
        values["query_pre_attn_scalar"] = HEAD_DIM
    if values.get("max_window_layers"):      # Qwen-2: layers from here on use the sliding window
        values["max_window_layers"] = min(int(values["max_window_layers"]), num_layers)
    for key in ("num_local_experts", "num_experts"):
        if values.get(key):
            values[key] = min(int(values[key]), MAX_EXPERTS)
    if values.get("num_experts_per_tok"):
        values["num_experts_per_tok"] = min(int(values["num_experts_per_tok"]),
                                            values.get("num_local_experts") or values.get("num_experts") or MAX_EXPERTS)
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        if values.get(key):
            values[key] = intermediate
    if isinstance(values.get("layer_types"), list):
        values["layer_types"] = _tiny_layer_types(values["layer_types"], num_layers)
    rotary = int(HEAD_DIM * float(values.get("partial_rotary_factor") or 1.0))
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(values.get(key), dict):
            values[key] = _shrink_rope_lists(values[key], rotary // 2)
    return AutoConfig.for_model(model_type, **values)


def _tiny_layer_types(types: list[str], num_layers: int) -> list[str]:
    """The target's first layers' attention types, with every kind the target uses kept present
    (Gemma-3's 5 sliding + 1 full becomes sliding, full at 2 layers)."""
    kinds = list(dict.fromkeys(types))
    if num_layers < len(kinds):
        raise LlmftError(f"The target mixes {len(kinds)} attention types ({', '.join(kinds)}): "
                         f"give the tiny model at least {len(kinds)} layers.")
    tiny = types[:num_layers] + [types[-1]] * max(0, num_layers - len(types))
    missing = [kind for kind in kinds if kind not in tiny]
    if missing:
        tiny = tiny[:num_layers - len(missing)] + missing
    return tiny


def _shrink_rope_lists(rope: dict[str, Any], length: int) -> dict[str, Any]:
    """Per-frequency rotary factors (Phi-3's longrope) have one entry per rotary pair: cut to the tiny head."""
    return {key: (value[:length] if isinstance(value, list) and value and isinstance(value[0], (int, float))
                  else _shrink_rope_lists(value, length) if isinstance(value, dict) else value)
            for key, value in rope.items()}


# ---------------------------------------------------------------- the model folder


def make_tiny_model(out: str | Path, like: str = "llama", *, num_layers: int = 2, hidden_size: int = 64,
                    vocab_size: int = 2048, seed: int = 0, tokenizer_from: str | None = None,
                    trust_remote_code: bool = False) -> Path:
    """Write a tiny random causal LM made like `like`, and its tokenizer, into `out` (replaced).

    `like`: a transformers model type (`llama`, `mistral`, `qwen3`, `gemma2`, `phi3`, ...), a local
    model folder or config.json, or a hub id llmft can read the config of without weights.
    The tokenizer is trained in the family's style with `vocab_size` entries (plus its chat
    markers), or copied from `tokenizer_from` (a local folder or cached hub id), so its own
    special tokens and chat template come along. The same arguments give byte-identical files.

    Default: a Llama with a Llama-2-style tokenizer (sentencepiece BPE with byte fallback and
    single-digit pieces, `<unk>`/`<s>`/`</s>` at 0/1/2, BOS added, "legacy" spacing after special
    tokens). With 2048 entries the sample ViGGO examples have a median of 50 tokens (with 512,
    40% exceed the tiny configs' 128).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target, origin = target_config(like, trust_remote_code)
    model_type = (target.get("text_config") or target).get("model_type")
    max_positions = int((target.get("text_config") or target).get("max_position_embeddings") or 2048)
    if tokenizer_from:
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise LlmftError(f"Cannot load the tokenizer of {tokenizer_from}: {' '.join(str(exc).split())[:300]}. "
                             "Give a local folder with tokenizer files, or leave tokenizer_from unset.") from None
        tokenizer_origin = f"copied from {tokenizer_from}"
    else:
        style = TOKENIZER_STYLES[FAMILY_TOKENIZERS.get(model_type, "llama")]
        tokenizer = make_tokenizer(style, vocab_size, max_positions)
        tokenizer_origin = f"{style.name}-style {style.kind}, trained on llmft's sample data"
    config = tiny_config(target, tokenizer, num_layers=num_layers, hidden_size=hidden_size)

    out = Path(out).expanduser()
    with atomic_folder(out) as tmp:
        tokenizer.save_pretrained(tmp)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / TINY_MARKER).write_text(json.dumps({
            "like": like, "config_from": origin, "model_type": config.model_type,
            "architecture": type(model).__name__, "tokenizer": tokenizer_origin,
            "parameters": sum(p.numel() for p in model.parameters()),
            "num_layers": num_layers, "hidden_size": hidden_size, "seed": seed}, indent=2) + "\n")
    return out


def make_tiny_llama(out: str | Path, num_layers: int = 2, hidden_size: int = 64, vocab_size: int = 2048,
                    seed: int = 0) -> Path:
    """`make_tiny_model(out, "llama", ...)`: the tiny Llama with a Llama-2-style tokenizer the tiny configs use."""
    return make_tiny_model(out, "llama", num_layers=num_layers, hidden_size=hidden_size,
                           vocab_size=vocab_size, seed=seed)


def read_tiny_marker(folder: str | Path) -> dict[str, Any] | None:
    """What a tiny model folder was made from, or None when it is not one."""
    path = Path(folder) / TINY_MARKER
    return json.loads(path.read_text()) if path.is_file() else None

