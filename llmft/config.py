"""The configuration every llmft command reads.

A run is described by one YAML file (which may extend a `base:` file) plus `key.sub=value`
overrides from the command line. `load_config` turns them into a validated `Config`; nothing
else in llmft reads YAML. Values that depend on the data (`epochs: auto`,
`global_batch_size: auto`) are filled in by `resolve_auto` once the training set is known.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmft.errors import LlmftError
from llmft.tasks import TASKS

# The task names come from the registry: a new task module is a new valid `data.task`.
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
Offload = Literal["none", "cpu", "nvme"]


class _Section(BaseModel):
    # Strict: an unknown key is an error (with a "did you mean"), never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(_Section):
    """Which model to fine-tune and how to load it."""

    name_or_path: str = Field(
        description="Hugging Face hub id (e.g. meta-llama/Llama-2-7b-hf) or a local folder "
        "holding config.json, weights and tokenizer files."
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer hub id or folder, when it differs from `name_or_path`."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Training precision. `auto`: bfloat16 on GPU, float32 on CPU "
        "(bfloat16 has no fast path on most CPUs)."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel passed to transformers. Packed examples are told apart "
        "by their restarting position_ids (no attention mask; each micro-batch becomes one padding-free "
        "row), which every kernel reads and which keeps each family's own attention pattern, sliding "
        "windows included. Gemma-2 needs eager (or flash_attention_2): transformers has no sdpa kernel "
        "with its soft-capping."
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass to save memory."
    )
    new_token_init: Literal["mean", "text"] = Field(
        "mean", description="How the embeddings of the special tokens a task adds start: `mean` of all "
        "existing rows, or `text`: the mean of the rows of the pieces the token's text splits into "
        "(`<END_MR>` -> `<`, `END`, `_`, `MR`, `>`)."
    )
    stop_token_init: Literal["eos", "same"] = Field(
        "eos", description="How the task's new stop token (e.g. `<END_MR>`) starts: `eos` copies the "
        "tokenizer's EOS rows (input and output), so the model ends answers with it from the first "
        "step instead of competing with its trained end-of-turn token; `same` starts it like the "
        "other new tokens (`new_token_init`)."
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub. Off: only transformers' own code runs."
    )


class DataConfig(_Section):
    """What to train on and how it becomes token sequences."""

    task: TaskName = Field(
        description="How rows are formatted: viggo | sql | gsm8k (the case study's tasks), "
        "prompt_completion or chat (OpenAI fine-tuning JSONL formats)."
    )
    train: str = Field(
        description="Training data: a local .jsonl/.json/.parquet/.csv file, a hub dataset "
        "`owner/name[:config][@split]`, or `sample:<task>` for llmft's synthetic sample set."
    )
    valid: str | None = Field(
        None, description="Validation data, same forms as `train`. Needed for `valid_loss`, "
        "evaluation during training and best-checkpoint selection."
    )
    test: str | None = Field(None, description="Test data for `llmft eval`, same forms as `train`.")
    max_length: int = Field(512, ge=16, le=1_048_576, description="Tokens per training sequence.")
    over_length: Literal["drop", "truncate", "error"] = Field(
        "drop", description="What to do with an example longer than `max_length`: drop it, "
        "truncate its completion, or stop with an error naming it."
    )
    train_on_prompt: bool = Field(
        False, description="Also train on prompt tokens. Off: loss on completion tokens only."
    )
    packing: bool = Field(
        True, description="Pack several examples into each sequence (no attention across "
        "examples). Off: length-grouped batches padded to their longest example."
    )
    cache_dir: str = Field(
        "~/.cache/llmft", description="Where tokenized datasets and converted models are cached."
    )
    split_seed: int = Field(
        42, description="Seed for splits llmft derives itself (e.g. sql-create-context has only "
        "`train`: 90% train, 5% validation, 5% test)."
    )
    tokenize_processes: int | None = Field(
        None, ge=1, description="Processes that tokenize a large split in parallel, one piece each "
        "at a time. Default: the CPUs this process may use. Splits under about 1 MB are tokenized "
        "in the calling process."
    )


class TrainingConfig(_Section):
    """The optimisation recipe."""

    epochs: int | Literal["auto"] = Field(
        1, description="Passes over the training set. `auto`: OpenAI's default of 4."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides `epochs`)."
    )
    micro_batch_size: int = Field(
        1, ge=1, description="Sequences per worker per forward/backward pass."
    )
    global_batch_size: int | Literal["auto"] = Field(
        8, description="Sequences per optimizer step across all workers. Must be a multiple of "
        "num_workers x micro_batch_size; the quotient is the gradient-accumulation count. "
        "`auto`: 0.2% of the training examples, between 1 and 256 (OpenAI's default), rounded "
        "up to that multiple."
    )
    learning_rate: float = Field(5e-6, gt=0, le=1, description="Peak learning rate.")
    lr_schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Decay after warmup: linear or cosine to 0, or constant."
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of all optimizer steps spent warming up linearly."
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Warmup steps; overrides `warmup_ratio` when set."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this; null disables clipping."
    )
    seed: int = Field(42, description="Seed for model init of new tokens, shuffling and dropout.")
    eval_every_steps: int | None = Field(
        None, ge=1, description="Validation loss every N optimizer steps (always at epoch end)."
    )
    eval_examples: int | None = Field(
        None, ge=1, description="Validation examples scored in each validation pass: the first N of "
        "`data.valid`; null: all of them."
    )
    generation_eval_every_steps: int | None = Field(
        None, ge=1, description="Generate and score answers on a validation subset every N steps."
    )
    generation_eval_examples: int = Field(
        32, ge=1, description="Validation examples used by the generation eval during training."
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Save a checkpoint every N optimizer steps (always at epoch end)."
    )
    max_failures: int = Field(
        0, ge=-1, description="Worker failures Ray may recover from by restarting the worker "
        "group from the latest checkpoint; -1 means unlimited."
    )


class DeepSpeedSection(_Section):
    """How DeepSpeed shards and offloads model states."""

    zero_stage: Literal[0, 1, 2, 3] = Field(
        3, description="ZeRO stage: 0 none, 1 optimizer states, 2 + gradients, 3 + parameters."
    )
    offload_optimizer: Offload = Field(
        "none", description="Where optimizer states live: none (device), cpu or nvme. Needs ZeRO >= 1."
    )
    offload_params: Offload = Field(
        "none", description="Where parameters live between uses: none, cpu or nvme. Needs ZeRO 3."
    )
    nvme_path: str | None = Field(None, description="Folder on a fast local disk for nvme offload.")
    config_file: str | None = Field(
        None, description="A DeepSpeed JSON to use instead of the generated one. Its `auto` "
        "values are filled from this config; values that contradict it are an error."
    )
    overlap_comm: bool | None = Field(
        None, description="Overlap gradient reduction with backward. Default: on for GPU, off for CPU."
    )
    reduce_bucket_size: int | None = Field(
        None, ge=1, description="Elements per gradient-reduction bucket. Default: sized to the model."
    )
    stage3_prefetch_bucket_size: int | None = Field(
        None, ge=0, description="ZeRO-3 elements to prefetch ahead. Default: sized to the model."
    )
    stage3_param_persistence_threshold: int | None = Field(
        None, ge=0, description="ZeRO-3 keeps parameters smaller than this unpartitioned."
    )
    stage3_max_live_parameters: int | None = Field(
        None, ge=1, description="ZeRO-3 cap on gathered parameters alive at once."
    )


class ScalingConfig(_Section):
    """How many Ray Train workers and what each gets."""

    num_workers: int | tuple[int, int] = Field(
        1, description="Training workers (one per GPU on GPU clusters). `[min, max]` makes the run "
        "elastic: Ray Train starts as many as the cluster can place, up to max, and when a node is "
        "lost continues from the last checkpoint on the workers left (at least min). The global "
        "batch stays the same; each worker accumulates more."
    )
    use_gpu: bool = Field(False, description="Give each worker a GPU.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs Ray reserves per worker.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Extra Ray resources per worker, e.g. {accelerator_type:A10G: 0.01}."
    )
    placement_timeout_s: float = Field(
        30, gt=0, description="Fail with a clear message if the workers cannot be placed in this time."
    )


class OutputConfig(_Section):
    """Where results go."""

    dir: str = Field(
        "outputs", description="Where runs go: a local folder, a shared filesystem mounted at the same path "
        "on every node, or a storage URI (s3://bucket/prefix, gs://bucket/prefix; "
        "s3://bucket/prefix?endpoint_override=http://host:port for S3-compatible stores). Checkpoints, "
        "metrics.jsonl and the exported model all go there; on a multi-node cluster every node must reach it."
    )
    run_name: str | None = Field(None, description="Run folder name under `dir`; a new run refuses an existing folder. Default: <task>-<model>-<time>-<random>.")
    keep_checkpoints: int = Field(2, ge=1, description="Best checkpoints to keep (the latest is kept too).")
    checkpoint_metric: str = Field("valid_loss", description="Metric that ranks checkpoints.")
    checkpoint_mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    export_best: bool = Field(True, description="Export the best checkpoint as a Hugging Face model at the end.")


class LoggingConfig(_Section):
    """What the run reports, and where."""

    progress_bar: bool = Field(True, description="Progress bar with step, loss and throughput on rank 0.")
    log_every_steps: int = Field(1, ge=1, description="Write train metrics every N optimizer steps.")
    tensorboard: bool = Field(False, description="Also write TensorBoard event files (needs the `tracking` extra).")
    mlflow_tracking_uri: str | None = Field(None, description="Also log to this MLflow tracking URI: a server (http://...), a database (sqlite:///...) or a local folder such as ./mlruns (needs the `tracking` extra).")


class EvalConfig(_Section):
    """How `llmft eval` generates answers."""

    engine: Literal["auto", "replicas", "zero3", "vllm"] = Field(
        "auto", description="replicas: a whole model per worker, fed by Ray Data. zero3: one Ray Train "
        "worker group holding the model partitioned with ZeRO-3 (any size, also on CPU workers). vllm: "
        "Ray Data's vLLM processor with tensor parallelism (GPU only, needs vLLM). auto: what `llmft plan "
        "--eval` picks: replicas when the model fits one device, else vllm when installed, else zero3."
    )
    batch_size: int = Field(16, ge=1, description="Prompts generated together by one replica or ZeRO-3 worker.")
    max_new_tokens: int | None = Field(
        None, ge=1, description="Longest answer in tokens. Default: 1.5x the longest reference answer plus 16, at most 512."
    )
    device_memory_gb: float | None = Field(
        None, gt=0, description="Memory of one worker's device that `auto` plans with. Default: 24 on GPU "
        "workers (an A10G); on CPU workers this machine's RAM divided by scaling.num_workers."
    )


class SweepConfig(_Section):
    """`llmft sweep`: a hyperparameter search on Ray Tune, each trial a full training run."""

    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Config keys and the values to try: every combination is a "
        "trial, e.g. {training.learning_rate: [1.0e-5, 2.0e-5], training.epochs: [2, 4]}."
    )
    choice: dict[str, list[Any]] = Field(
        default_factory=dict, description="Config keys and values to draw from at random: each trial "
        "takes one value per key."
    )
    num_samples: int = Field(
        1, ge=1, description="Trials per grid combination (random choices are drawn anew for each)."
    )
    early_stopping: bool = Field(
        False, description="Stop trials early with ASHA when their `output.checkpoint_metric` trails "
        "the other trials' at the same step."
    )
    grace_period: int = Field(
        10, ge=1, description="ASHA: optimizer steps every trial runs before it may be stopped."
    )
    reduction_factor: float = Field(
        2, gt=1, description="ASHA: at each rung, about 1/reduction_factor of the trials go on."
    )
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Trials running at once. Default: as many as the cluster's resources "
        "hold, given each trial's workers."
    )


class Config(_Section):
    """A whole llmft run."""

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    source: str | None = Field(None, description="The YAML file this config came from (set by llmft).")

    @model_validator(mode="after")
    def _check_consistency(self) -> "Config":
        ds, tr, sc = self.deepspeed, self.training, self.scaling
        if ds.offload_optimizer != "none" and ds.zero_stage < 1:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1 "
                             "(ZeRO-Offload partitions the optimizer states it moves)")
        if ds.offload_params != "none" and ds.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.zero_stage: 3 "
                             "(only ZeRO-3 partitions parameters)")
        if "nvme" in (ds.offload_optimizer, ds.offload_params) and not ds.nvme_path:
            raise ValueError("nvme offload needs deepspeed.nvme_path: a folder on a fast local disk")
        if isinstance(tr.epochs, int) and tr.epochs < 1:
            raise ValueError("training.epochs must be >= 1 or `auto`")
        low, high = (sc.num_workers, sc.num_workers) if isinstance(sc.num_workers, int) else sc.num_workers
        if not 1 <= low <= high:
            raise ValueError(f"scaling.num_workers must be a positive count or [min, max] with 1 <= min <= max, "
                             f"not {list(sc.num_workers) if isinstance(sc.num_workers, tuple) else sc.num_workers}")
        if isinstance(tr.global_batch_size, int):
            per_pass = batch_multiple(self.world_sizes, tr.micro_batch_size)
            if tr.global_batch_size < 1 or tr.global_batch_size % per_pass:
                sizes = "every worker count from scaling.num_workers" if low < high else "scaling.num_workers"
                raise ValueError(
                    f"training.global_batch_size ({tr.global_batch_size}) must be a positive multiple of "
                    f"{sizes} x training.micro_batch_size ({', '.join(f'{w} x {tr.micro_batch_size}' for w in self.world_sizes)}), "
                    f"i.e. of {per_pass}; e.g. set it to {max(1, round(tr.global_batch_size / per_pass)) * per_pass}"
                )
        return self

    # Derived values: one definition each.
    @property
    def world_sizes(self) -> list[int]:
        """Every number of workers the run may have: one, or all of an elastic [min, max]."""
        workers = self.scaling.num_workers
        return [workers] if isinstance(workers, int) else list(range(workers[0], workers[1] + 1))

    @property
    def world_size(self) -> int:
        """The most workers the run uses (an elastic run may run on fewer)."""
        return self.world_sizes[-1]

    @property
    def is_elastic(self) -> bool:
        return len(self.world_sizes) > 1

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per worker per optimizer step: the global batch is the same at every size."""
        return self.global_batch_size // (world_size * self.training.micro_batch_size)

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.accumulation_steps(self.world_size)

    @property
    def global_batch_size(self) -> int:
        if self.training.global_batch_size == "auto":
            raise LlmftError("training.global_batch_size is `auto`: it is resolved once the "
                             "training data is known (run `llmft validate` or `llmft prepare`).")
        return self.training.global_batch_size

    @property
    def num_epochs(self) -> int:
        return 4 if self.training.epochs == "auto" else self.training.epochs

    @property
    def dotted_values(self) -> dict[str, Any]:
        return _flatten(self.model_dump(mode="json"))


def resolve_auto(cfg: Config, num_train_examples: int) -> Config:
    """Fill `auto` values from the training set size (OpenAI's fine-tuning defaults)."""
    training = cfg.training.model_copy()
    if training.epochs == "auto":
        training.epochs = 4
    if training.global_batch_size == "auto":
        per_pass = batch_multiple(cfg.world_sizes, training.micro_batch_size)
        wanted = min(256, max(1, math.ceil(0.002 * num_train_examples)))
        training.global_batch_size = math.ceil(wanted / per_pass) * per_pass
    return cfg.model_copy(update={"training": training})


def batch_multiple(world_sizes: list[int], micro_batch_size: int) -> int:
    """The global batch must split evenly at every world size: a multiple of this."""
    return math.lcm(*(w * micro_batch_size for w in world_sizes))


# ---------------------------------------------------------------- loading YAML


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (following `base:`), apply `key.sub=value` overrides, validate."""
    path = Path(path)
    raw, origins = _read_with_bases(path, chain=[])
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(raw, key, value)
        origins[key] = "the command line"
    raw["source"] = str(path)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise LlmftError(_explain(exc, raw, origins, path)) from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise LlmftError(f"Config file {path} does not exist. Check the path (relative paths are "
                         f"read from the current directory, {Path.cwd()}).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown place"
        raise LlmftError(f"{path}: YAML syntax error at {where}: {exc.problem}. Fix the YAML "
                         "there (indentation and `key: value` pairs are the usual culprits).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LlmftError(f"{path}: the top level must be a mapping of sections (model:, data:, ...), "
                         f"not a {type(data).__name__}.")
    return data


def _read_with_bases(path: Path, chain: list[Path]) -> tuple[dict, dict[str, str]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in [*chain, resolved])
        raise LlmftError(f"`base:` cycle: {cycle}. A config may extend a base, but no base may "
                         "extend (directly or indirectly) a config that extends it.")
    data = _read_yaml(path)
    base_name = data.pop("base", None)
    own_origins = {key: str(path) for key in _flatten(data)}
    if base_name is None:
        return data, own_origins
    base_path = (path.parent / str(base_name))
    if not base_path.is_file():
        raise LlmftError(f"{path}: `base: {base_name}` names {base_path}, which does not exist. "
                         "A base path is relative to the file that names it.")
    base, origins = _read_with_bases(base_path, [*chain, resolved])
    origins.update(own_origins)
    return _deep_merge(base, data), origins


def _deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        # Free-form mappings (extra worker resources, a sweep's search space) stay whole.
        if isinstance(value, dict) and value and key not in ("resources_per_worker", "grid", "choice"):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def with_values(cfg: Config, values: dict[str, Any], where: str) -> Config:
    """`cfg` with dotted keys set to `values` (a sweep trial's, say), validated as a YAML file is.

    An invalid value raises LlmftError naming the key and `where` the value came from.
    """
    raw = cfg.model_dump(mode="json")
    for key, value in values.items():
        _set_dotted(raw, key, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        origins = {**{key: str(cfg.source) for key in _flatten(raw)}, **dict.fromkeys(values, where)}
        raise LlmftError(_explain(exc, raw, origins, Path(cfg.source or "the config"))) from None


def leaf_keys() -> list[str]:
    """Every settable dotted key (`training.learning_rate`, ...), sections excluded."""
    sections = {name for name, field in Config.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
    return [key for key in _known_keys(Config) if key not in sections]


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise LlmftError(f"Override `{text}` is not of the form key.sub=value "
                         "(e.g. training.learning_rate=1e-5).")
    try:
        return key.strip(), yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        return key.strip(), value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_known_keys(annotation, prefix + name + "."))
    return keys


def _explain(exc: ValidationError, raw: dict, origins: dict[str, str], path: Path) -> str:
    known = _known_keys(Config)
    problems: dict[str, list[str]] = {}  # message prefix -> reasons (a union reports one per member)
    for err in exc.errors():
        # Pydantic puts union members in loc (e.g. "int", "literal['auto']"); keep field names only.
        dotted = ".".join(str(p) for p in err["loc"] if str(p) in known_names(known))
        where = origins.get(dotted) or _origin_prefix(origins, dotted) or str(path)
        if err["type"] == "extra_forbidden":
            dotted = ".".join(str(p) for p in err["loc"])
            guess = difflib.get_close_matches(dotted, known, n=1, cutoff=0.6)
            hint = f" Did you mean `{guess[0]}`?" if guess else " See the config reference in README.md."
            problems.setdefault(f"{where}: unknown key `{dotted}`.{hint}", [])
        elif err["type"] == "missing":
            problems.setdefault(f"{where}: `{dotted}` is required but missing.", [])
        elif not dotted:  # a cross-field check
            problems.setdefault(f"{where}: {err['msg'].removeprefix('Value error, ')}.", [])
        else:
            reasons = problems.setdefault(f"{where}: `{dotted}` = {err.get('input')!r} is invalid:", [])
            reasons.append(err["msg"].removeprefix("Input should be ").removeprefix("Value error, "))
    return " ".join(f"{head} It should be {' or '.join(reasons)}." if reasons else head
                    for head, reasons in problems.items())


def known_names(known: list[str]) -> set[str]:
    return {part for key in known for part in key.split(".")}


def _origin_prefix(origins: dict[str, str], dotted: str) -> str | None:
    for key, origin in origins.items():
        if key.startswith(dotted + ".") or dotted.startswith(key + "."):
            return origin
    return None
