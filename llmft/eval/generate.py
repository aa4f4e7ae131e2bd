"""Batched greedy generation: one model replica per Ray worker, fed by Ray Data.

Prompts are left-padded so that every row of a batch ends where generation starts, and the
KV cache makes each new token cost one position. Generation stops at the task's stop token.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Generator:
    """A model replica. Ray Data builds one per worker and calls it on batches of prompts."""

    def __init__(self, model_path: str, stop_token: str | None, max_new_tokens: int, use_gpu: bool,
                 dtype: str, num_threads: int = 1, trust_remote_code: bool = False, cache_dir: str = "~/.cache/llmft"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llmft.models.source import local_model
        from llmft.models.tokenizer import ensure_pad_token

        model_path = local_model(model_path, cache_dir)  # a URI: downloaded once per node, into data.cache_dir

        if not use_gpu:
            torch.set_num_threads(max(1, num_threads))
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        ensure_pad_token(self.tokenizer)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code).to(self.device).eval()
        self.stop_text = stop_token or self.tokenizer.eos_token
        stop_id = self.tokenizer.convert_tokens_to_ids(self.stop_text) if self.stop_text else None
        # A base model evaluated few-shot may not have the task's markers as tokens; then the
        # stop marker is matched as text.
        self.stop_is_token = stop_id is not None and stop_id != self.tokenizer.unk_token_id
        self.eos_ids = [i for i in {stop_id if self.stop_is_token else None, self.tokenizer.eos_token_id} if i is not None]
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        prompts = [str(p) for p in batch["prompt"]]
        return {"index": batch["index"], "prediction": np.array(self.generate(prompts), dtype=object)}

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> list[str]:
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        kwargs: dict[str, Any] = {}
        if not self.stop_is_token and self.stop_text:
            kwargs.update(stop_strings=[self.stop_text], tokenizer=self.tokenizer)
        output = self.model.generate(**encoded, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     num_beams=1, use_cache=True, eos_token_id=self.eos_ids,
                                     pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
        return [self.clean(text) for text in texts]

    def clean(self, text: str) -> str:
        return clean_prediction(text, self.stop_text, self.tokenizer)


def clean_prediction(text: str, stop_text: str | None, tokenizer) -> str:
    """The answer: the text before the stop marker, without padding or EOS."""
    if stop_text and stop_text in text:
        text = text.split(stop_text, 1)[0]
    for token in {tokenizer.pad_token, tokenizer.eos_token}:
        if token:
            text = text.replace(token, "")
    return text.strip()


@torch.no_grad()
def generate_sharded(model, tokenizer, prompts: list[str], *, stop_token: str | None, max_new_tokens: int,
                     batch_size: int, rank: int, world_size: int, device: torch.device) -> list[str]:
    """Greedy answers for `prompts`, split across the training workers, gathered on every rank.

    Under ZeRO-3 every forward pass gathers parameters collectively, so all ranks run the same
    number of `generate` calls (short shards are filled with a repeat) with `synced_gpus`.
    """
    import torch.distributed as dist

    mine = list(range(rank, len(prompts), world_size))
    per_rank = -(-len(prompts) // world_size)
    calls = -(-per_rank // batch_size)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    stop_text = stop_token or tokenizer.eos_token
    eos_ids = [i for i in {tokenizer.convert_tokens_to_ids(stop_text), tokenizer.eos_token_id} if i is not None]
    answers: dict[int, str] = {}
    for call in range(calls):
        chunk = mine[call * batch_size:(call + 1) * batch_size]
        batch = [prompts[i] for i in chunk] or [prompts[0]]
        encoded = tokenizer(batch, return_tensors="pt", padding=True).to(device)
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                use_cache=True, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id,
                                synced_gpus=world_size > 1)
        texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=False)
        answers.update({i: clean_prediction(t, stop_text, tokenizer) for i, t in zip(chunk, texts)})
    tokenizer.padding_side = padding_side
    if world_size > 1:
        gathered: list[dict[int, str]] = [{} for _ in range(world_size)]
        dist.all_gather_object(gathered, answers)
        answers = {i: text for part in gathered for i, text in part.items()}
    return [answers[i] for i in range(len(prompts))]


def generate_with_ray(prompts: list[str], *, model_path: str, stop_token: str | None, max_new_tokens: int,
                      num_workers: int, use_gpu: bool, cpus_per_worker: float, dtype: str,
                      batch_size: int, cache_dir: str, trust_remote_code: bool = False) -> list[str]:
    """Predictions for `prompts`, in order, from `num_workers` model replicas."""
    import logging

    import ray

    # Ray Data's per-operator progress lines would drown the results table.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    dataset = ray.data.from_items([{"index": i, "prompt": p} for i, p in enumerate(prompts)],
                                  override_num_blocks=max(1, min(len(prompts), num_workers * 4)))
    results = dataset.map_batches(
        Generator,
        fn_constructor_kwargs={"model_path": model_path, "stop_token": stop_token, "max_new_tokens": max_new_tokens,
                               "use_gpu": use_gpu, "dtype": dtype, "cache_dir": cache_dir,
                               "num_threads": int(cpus_per_worker),
                               "trust_remote_code": trust_remote_code},
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker, num_gpus=1 if use_gpu else 0,
    ).take_all()
    by_index = {int(r["index"]): str(r["prediction"]) for r in results}
    return [by_index[i] for i in range(len(prompts))]
