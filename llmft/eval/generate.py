"""Batched generation: the one implementation behind every place llmft generates text.

- `generation_batches`: which prompts are generated together. Computed once, so every engine
  groups the same prompts with the same padding and gives the same greedy answers.
- `generate_batch`: one batch through `model.generate`, left-padded so that every row ends where
  generation starts, with the KV cache; greedy unless sampling is asked for. Each answer is cut
  at the task's stop marker and records why generation stopped (`Answer.stop_reason`).
- `Replica`: one whole model on one device. Ray Data runs one per worker for `llmft eval`'s
  replicas engine; `llmft generate` runs one in its own process.
- `generate_sharded`: the batches split across a ZeRO-3 worker group, for the generation eval
  during training and `llmft eval`'s zero3 engine.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from llmft.config import Config

# Why generation stopped, per answer.
STOP_TOKEN = "stop_token"  # the task's stop marker
EOS = "eos"                # the tokenizer's EOS or another end token of the model
MAX_TOKENS = "max_tokens"  # the length limit
STOP_REASONS = (STOP_TOKEN, EOS, MAX_TOKENS)


@dataclass(frozen=True)
class Answer:
    """A generated answer, without its stop marker, and why generation stopped."""

    text: str
    stop_reason: str


@dataclass(frozen=True)
class Generated:
    """An engine's answers, in prompt order, and the time its busiest replica spent generating
    them, when the engine can tell (the rest of an eval's generation time is starting Ray's
    workers, loading the model and handing batches around)."""

    answers: list[Answer]
    decoding_seconds: float | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding (`llmft generate --temperature/--top-p`)."""

    temperature: float
    top_p: float = 1.0


@dataclass(frozen=True)
class Stopping:
    """Where answers end: at the task's stop marker, or at one of the model's end tokens."""

    marker: str | None          # the task's stop marker; None when the task stops at EOS
    marker_id: int | None       # its token id; None when the tokenizer lacks it (matched as text)
    end_ids: tuple[int, ...]    # the tokenizer's EOS and the model's other end tokens
    strip: tuple[str, ...]      # pad and EOS texts, never part of an answer

    @property
    def token_ids(self) -> list[int]:
        """Every token id that ends generation."""
        return ([] if self.marker_id is None else [self.marker_id]) + list(self.end_ids)


def stopping_for(tokenizer, stop_token: str | None, generation_config=None) -> Stopping:
    """The stop marker of a task (`Task.stop_token`) for this tokenizer and model.

    A base model evaluated few-shot may not have the task's markers as tokens; its marker is then
    matched as text. End tokens are the tokenizer's EOS plus the model's own
    (`generation_config.eos_token_id`, e.g. a chat model's end-of-turn token).
    """
    marker_id = tokenizer.convert_tokens_to_ids(stop_token) if stop_token else None
    if marker_id is not None and marker_id == tokenizer.unk_token_id:
        marker_id = None
    model_ends = getattr(generation_config, "eos_token_id", None)
    model_ends = model_ends if isinstance(model_ends, list) else [model_ends]
    end_ids = tuple(dict.fromkeys(i for i in [tokenizer.eos_token_id, *model_ends] if i is not None and i != marker_id))
    strip = tuple(dict.fromkeys(t for t in (tokenizer.pad_token, tokenizer.eos_token) if t))
    return Stopping(marker=stop_token, marker_id=marker_id, end_ids=end_ids, strip=strip)


def finish(new_ids: list[int], tokenizer, stopping: Stopping) -> Answer:
    """The answer in a row of generated token ids: cut at the first stop or end token."""
    reason = MAX_TOKENS
    for position, token in enumerate(new_ids):
        if token == stopping.marker_id or token in stopping.end_ids:
            reason = STOP_TOKEN if token == stopping.marker_id else EOS
            new_ids = new_ids[:position]
            break
    text = tokenizer.decode(new_ids, skip_special_tokens=False)
    if stopping.marker and stopping.marker_id is None and stopping.marker in text:
        text, reason = text.split(stopping.marker, 1)[0], STOP_TOKEN
    for token in stopping.strip:
        text = text.replace(token, "")
    return Answer(text.strip(), reason)


def generation_batches(prompts: list[str], tokenizer, batch_size: int) -> list[list[int]]:
    """Prompt indices in generation batches, longest prompts first (less padding per batch, and
    a batch too large for memory fails at once rather than at the end)."""
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]] if prompts else []
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], stopping: Stopping, max_new_tokens: int, *,
                   device: torch.device, sampling: Sampling | None = None, synced: bool = False,
                   streamer=None) -> list[Answer]:
    """Answers to `prompts`, generated together. `synced`: every rank of a ZeRO-3 group calls
    this at once, and ranks that finish early keep joining the others' forward passes."""
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = padding_side
    kwargs: dict[str, Any] = {"do_sample": False}
    if sampling is not None:
        kwargs = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
    if stopping.marker and stopping.marker_id is None:
        kwargs.update(stop_strings=[stopping.marker], tokenizer=tokenizer)
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, num_beams=1, use_cache=True,
                            eos_token_id=stopping.token_ids, pad_token_id=tokenizer.pad_token_id,
                            synced_gpus=synced, streamer=streamer, **kwargs)
    new_tokens = output[:, encoded["input_ids"].shape[1]:].tolist()
    return [finish(ids, tokenizer, stopping) for ids in new_tokens]


def generation_tokenizer(cfg: Config):
    """The model's own tokenizer (task tokens are not added: a base model reads the markers as
    text) with a pad token."""
    from llmft.models.tokenizer import ensure_pad_token, load_tokenizer

    tokenizer = load_tokenizer(cfg)
    ensure_pad_token(tokenizer)
    return tokenizer


class Replica:
    """One whole model on one device (a GPU, or `num_threads` CPU threads)."""

    def __init__(self, cfg: Config, stop_token: str | None, max_new_tokens: int,
                 num_threads: int | None = None, sampling: Sampling | None = None):
        from llmft.models.loading import load_model
        from llmft.train.deepspeed import training_dtype

        if cfg.scaling.use_gpu:
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
            if num_threads:
                torch.set_num_threads(num_threads)
        self.tokenizer = generation_tokenizer(cfg)
        self.model = load_model(cfg, self.tokenizer, dtype=training_dtype(cfg)).to(self.device).eval()
        self.stopping = stopping_for(self.tokenizer, stop_token, self.model.generation_config)
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def generate(self, prompts: list[str], streamer=None) -> list[Answer]:
        return generate_batch(self.model, self.tokenizer, prompts, self.stopping, self.max_new_tokens,
                              device=self.device, sampling=self.sampling, streamer=streamer)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Ray Data: one row is one generation batch; it comes back with the answers, the replica
        that made them and how long that took."""
        started = time.perf_counter()
        answers = self.generate([str(prompt) for prompt in row["prompts"]])
        return {"indices": list(row["indices"]), "texts": [a.text for a in answers],
                "stop_reasons": [a.stop_reason for a in answers],
                "replica": self.name, "seconds": time.perf_counter() - started}


@torch.no_grad()
def generate_sharded(model, tokenizer, prompts: list[str], batches: list[list[int]], *, stopping: Stopping,
                     max_new_tokens: int, rank: int, world_size: int, device: torch.device) -> list[Answer]:
    """Answers to `prompts`, batch b on rank b % world_size, gathered on every rank.

    Under ZeRO-3 every forward pass gathers parameters collectively, so all ranks make the same
    number of `generate` calls (a rank short of batches repeats one and drops its answers).
    """
    import torch.distributed as dist

    mine = batches[rank::world_size]
    calls = -(-len(batches) // world_size)
    answers: dict[int, Answer] = {}
    for call in range(calls):
        chunk = mine[call] if call < len(mine) else batches[0]
        out = generate_batch(model, tokenizer, [prompts[i] for i in chunk], stopping, max_new_tokens,
                             device=device, synced=world_size > 1)
        if call < len(mine):
            answers.update(zip(chunk, out))
    if world_size > 1:
        gathered: list[dict[int, Answer]] = [{} for _ in range(world_size)]
        dist.all_gather_object(gathered, answers)
        answers = {i: answer for part in gathered for i, answer in part.items()}
    return [answers[i] for i in range(len(prompts))]
