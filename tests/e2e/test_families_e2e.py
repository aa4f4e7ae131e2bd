"""Open model families beyond Llama, end to end with real Ray Train, DeepSpeed ZeRO-3 and Ray Data.

Each family's tiny model is its released config (tests/fixtures/model_configs) shrunk by
`llmft.models.tiny`, with a tokenizer in the family's style: Mistral (sliding window, BOS),
Qwen3-0.6B (byte-level BPE without BOS, tied embeddings, q/k norms), Gemma-2 (tied embeddings,
sliding and full layers, soft-capping, eager attention), Phi-3 (fused projections, sliding
window, no BOS, its chat template). Gemma-2 and Phi-3 train OpenAI-style chat rows over their own
chat templates, the others ViGGO with its marker tokens. (The packed-loss and parameter-count unit
tests also cover Qwen2.5 and Gemma-3.) Each one trains under ZeRO-3 on 2 workers, resumes from a checkpoint with the uninterrupted run's losses, exports a folder plain
transformers loads with the trained model's logits, and is scored by `llmft eval`.

What these catch: a family that does not load, shard, save or export through the shared
AutoModelForCausalLM path (tied weights saved twice or lost, a layer type or sliding window
dropped on export, a tokenizer that gains or loses BOS or its special tokens on the way), a
resume that is not exact for that family, and generation that does not stop at the task's
marker with the family's tokenizer (for chat, the template's own end of turn).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmft.checkpoint import find_checkpoints, read_state
from llmft.config import load_config
from llmft.train.driver import run_training
from llmft.train.logger import read_metrics
from tests.support import MODEL_CONFIG_FIXTURES, REPO

pytestmark = pytest.mark.e2e

# family -> (released config it is made like, attention kernel, task). Gemma-2 and Phi-3 train the
# chat task over their own chat templates; the others ViGGO with its marker tokens.
FAMILIES = {
    "mistral": ("mistral-7b", "sdpa", "viggo"),
    "qwen3": ("qwen3-0.6b", "sdpa", "viggo"),
    "gemma2": ("gemma-2-9b", "eager", "chat"),  # transformers has no sdpa kernel with Gemma-2's soft-capping
    "phi3": ("phi-3-mini-4k", "sdpa", "chat"),
}
END_OF_TURN = {"gemma2": "<end_of_turn>", "phi3": "<|end|>"}
STEPS = 4


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory) -> dict[str, Path]:
    """The ViGGO samples as OpenAI chat rows: the sentence asked, the meaning representation answered."""
    from llmft.data.samples import generate_rows

    folder = tmp_path_factory.mktemp("chat")
    files = {}
    for split, count in (("train", 400), ("test", 8)):
        rows = [{"messages": [{"role": "user", "content": row["target"]},
                              {"role": "assistant", "content": row["meaning_representation"]}]}
                for row in generate_rows("viggo", split)[:count]]
        files[split] = folder / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return files


def config(model_dir: Path, out: Path, attn: str, *overrides: str):
    return load_config(REPO / "configs/viggo/tiny-cpu.yaml", [
        f"model.name_or_path={model_dir}", f"model.attn_implementation={attn}", f"output.dir={out}",
        "data.valid=null", f"training.max_steps={STEPS}", "training.checkpoint_every_steps=2",
        "training.eval_every_steps=null", "training.generation_eval_every_steps=null",
        "training.warmup_steps=1", "scaling.num_workers=2", "deepspeed.zero_stage=3",
        "logging.progress_bar=false", *overrides])


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_resumes_exports_and_evaluates(family, ray_session, chat_files, tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmft.eval.run import run_eval
    from llmft.models.tiny import make_tiny_model
    from llmft.models.tokenizer import load_task_tokenizer

    target, attn, task = FAMILIES[family]
    data = [] if task == "viggo" else [
        "data.task=chat", f"data.train={chat_files['train']}", f"data.test={chat_files['test']}"]
    model_dir = make_tiny_model(tmp_path / "model", str(MODEL_CONFIG_FIXTURES / target))
    made = AutoConfig.from_pretrained(model_dir)

    # -- trains under ZeRO-3 on 2 workers, with checkpoints at steps 2 and 4
    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("LLMFT_TRACE_DIR", str(trace))
    cfg = config(model_dir, tmp_path / "runs", attn, f"output.run_name={family}", *data)
    run_dir = Path(run_training(cfg))
    straight = losses(run_dir)
    assert sorted(straight) == list(range(1, STEPS + 1))
    assert straight[STEPS] < straight[1]

    # -- resumes from the step-2 checkpoint with the same losses
    monkeypatch.delenv("LLMFT_TRACE_DIR")
    step2 = next(c for c in find_checkpoints(run_dir) if read_state(c)["position"]["global_step"] == 2)
    resumed_dir = Path(run_training(cfg, resume=str(step2)))
    resumed = losses(resumed_dir)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), (family, step)

    # -- exports a folder plain transformers loads, with the trained model's logits
    exported = run_dir / "model"
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    assert model.config.model_type == made.model_type
    assert model.config.tie_word_embeddings == made.tie_word_embeddings
    assert getattr(model.config, "sliding_window", None) == getattr(made, "sliding_window", None)
    assert getattr(model.config, "layer_types", None) == getattr(made, "layer_types", None)
    saved = torch.load(trace / "final_logits.pt")
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)
    # The exported tokenizer tokenizes as training did: BOS or none as the family has it, task tokens
    # whole; generation stops at the task's marker, for chat the template's own end of turn.
    exported_tokenizer, training_tokenizer = AutoTokenizer.from_pretrained(exported), load_task_tokenizer(cfg)
    text = "<START_TEXT>I liked it.<END_TEXT><START_MR>inform(rating[good])<END_MR><|im_end|>"
    assert exported_tokenizer(text)["input_ids"] == training_tokenizer(text)["input_ids"]
    assert exported_tokenizer.chat_template == training_tokenizer.chat_template
    stop = END_OF_TURN.get(family, "<END_MR>")
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == exported_tokenizer.convert_tokens_to_ids(stop) != exported_tokenizer.unk_token_id

    # -- is scored by llmft eval
    results = run_eval(config(exported, tmp_path / "runs", attn, "scaling.num_workers=1", *data), model=str(exported),
                       split="test", limit=4, few_shot=0, out=str(tmp_path / "eval.json"), address=None, batch_size=4)
    assert results["num_examples"] == 4 and "exact_match" in results["metrics"]
    predictions = [json.loads(line) for line in (tmp_path / "eval.predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all(stop not in p["prediction"] for p in predictions)
