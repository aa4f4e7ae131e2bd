"""The `llmft` command line. Subcommands stay thin: they parse arguments and call one function.

Every command that takes a CONFIG also takes `key.sub=value` overrides after it. A user error
(`LlmftError`) is printed as one paragraph on stderr with exit status 2, never a traceback.
Heavy libraries are imported inside the commands so that `llmft --help` is instant.
"""

from __future__ import annotations

import functools
import json
import sys
import textwrap

import click

from llmft.errors import LlmftError

CONFIG_ARGS = [
    click.argument("config", type=click.Path(dir_okay=False)),
    click.argument("overrides", nargs=-1),
]


def _with_config(func):
    for decorator in reversed(CONFIG_ARGS):
        func = decorator(func)
    return func


def _user_errors(func):
    """Turn `LlmftError` into a clear message and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LlmftError as exc:
            message = textwrap.fill(str(exc), width=100, break_long_words=False, break_on_hyphens=False)
            click.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmft")
def main() -> None:
    """llmft: full-parameter fine-tuning of open LLMs with Ray Train and DeepSpeed ZeRO.

    Overrides: every command taking CONFIG accepts `key.sub=value` pairs after it,
    e.g. `llmft train configs/viggo/tiny-cpu.yaml training.learning_rate=1e-4`.
    """


@main.command()
@_with_config
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_user_errors
def validate(config, overrides, as_json):
    """Check CONFIG and print it resolved, with derived values and the DeepSpeed JSON."""
    from llmft.config import load_config
    from llmft.validate import describe

    cfg = load_config(config, overrides)
    report = describe(cfg)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        from llmft.validate import print_report

        print_report(report)


@main.command()
@_with_config
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_user_errors
def prepare(config, overrides, as_json):
    """Check, tokenize and cache the data of CONFIG, and report on it (OpenAI prepare_data and more)."""
    from llmft.config import load_config
    from llmft.data.prepare import run_prepare

    run_prepare(load_config(config, overrides), as_json=as_json)


@main.command()
@_with_config
@click.option("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else an embedded local Ray on 127.0.0.1).")
@click.option("--resume", default=None, help="`latest` or a checkpoint path to resume from.")
@click.option("--smoke", is_flag=True,
              help="Check the config's whole code path on a tiny model of the same family: every setting kept except "
                   "the model's size and the steps (GPUs mapped to CPU workers here); trains, resumes with equal "
                   "losses, exports. Exit 1 if a check fails.")
@_user_errors
def train(config, overrides, address, resume, smoke):
    """Fine-tune the model of CONFIG with Ray Train workers and DeepSpeed ZeRO."""
    from llmft.config import load_config

    cfg = load_config(config, overrides)
    if smoke:
        from llmft.smoke import run_smoke

        if resume:
            raise LlmftError("--smoke makes its own checkpoint and resumes from it; drop --resume.")
        sys.exit(0 if run_smoke(cfg, address=address).passed else 1)
    from llmft.train.driver import run_training

    run_training(cfg, address=address, resume=resume)


@main.command()
@_with_config
@click.option("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else an embedded local Ray on 127.0.0.1).")
@click.option("--resume", is_flag=True, help="Continue the stopped sweep named by output.run_name.")
@_user_errors
def sweep(config, overrides, address, resume):
    """Search CONFIG's `sweep:` space on Ray Tune: each trial a training run; table, curves, best model."""
    from llmft.config import load_config
    from llmft.sweep import run_sweep

    run_sweep(load_config(config, overrides), address=address, resume=resume)


@main.command()
@click.argument("checkpoint")
@click.option("--out", required=True, help="Folder or storage URI (s3://bucket/prefix) for the Hugging Face model.")
@_user_errors
def export(checkpoint, out):
    """Write CHECKPOINT (a folder or a storage URI) as a consolidated Hugging Face model folder."""
    from llmft.export import export_checkpoint
    from llmft.storage import shown

    click.echo(f"exported {shown(export_checkpoint(checkpoint, out))}")


@main.command("eval")
@_with_config
@click.option("--model", "model_path", default=None, help="Model hub id, folder or storage URI (default: the config's model).")
@click.option("--split", default="test", type=click.Choice(["train", "valid", "test"]), show_default=True)
@click.option("--limit", default=None, type=int, help="Evaluate only the first N examples.")
@click.option("--few-shot", default=0, type=int, show_default=True, help="Training examples shown in each prompt.")
@click.option("--out", default=None, help="Results JSON, a path or storage URI (predictions go beside it).")
@click.option("--engine", default=None, type=click.Choice(["auto", "replicas", "zero3", "vllm"]),
              help="Eval engine (default: eval.engine, `auto`): a model replica per worker, one ZeRO-3 group, or vLLM.")
@click.option("--batch-size", default=None, type=int, help="Prompts generated together per replica or ZeRO-3 worker (default: eval.batch_size).")
@click.option("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else embedded local Ray).")
@_user_errors
def eval_(config, overrides, model_path, split, limit, few_shot, out, engine, batch_size, address):
    """Generate answers with a model and score them with the task's metrics."""
    from llmft.config import load_config
    from llmft.eval.run import run_eval

    run_eval(load_config(config, overrides), model=model_path, split=split, limit=limit,
             few_shot=few_shot, out=out, address=address, engine=engine, batch_size=batch_size)


@main.command()
@click.argument("model")
@click.option("--task", default=None, help="The task whose format the prompt takes (default: --config's data.task).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="A run config: its task, few-shot data (data.train), dtype and eval settings.")
@click.option("--text", default=None, help="The task's input field (viggo: target; gsm8k: question; chat: a user message).")
@click.option("--field", "fields", multiple=True, help="A raw task field, NAME=VALUE (repeatable; e.g. sql's question and context).")
@click.option("--prompt", default=None, help="A ready prompt, used as it is.")
@click.option("--input", "input_path", default=None, type=click.Path(dir_okay=False), help="JSONL file: one row of task fields per line.")
@click.option("--output", "output_path", default=None, type=click.Path(dir_okay=False),
              help="JSONL answers, one per input row [default: INPUT.predictions.jsonl].")
@click.option("--few-shot", default=0, show_default=True, help="Solved training examples put before each prompt, as in `llmft eval`.")
@click.option("--shots", default=None, help="Data the few-shot examples come from (default: --config's data.train).")
@click.option("--max-new-tokens", default=None, type=int, help="Longest answer [default: eval.max_new_tokens, else 256].")
@click.option("--temperature", default=0.0, show_default=True, help="0 is greedy; above 0 samples.")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling (with --temperature > 0).")
@click.option("--seed", default=0, show_default=True, help="Seed for sampling.")
@click.option("--batch-size", default=None, type=int, help="Rows generated together (default: eval.batch_size).")
@_user_errors
def generate(model, task, config_path, text, fields, prompt, input_path, output_path, few_shot, shots,
             max_new_tokens, temperature, top_p, seed, batch_size):
    """Answer with MODEL (exported folder, checkpoint or base model) in a task's format."""
    from llmft.inference import run_generate

    run_generate(model, config=config_path, task=task, text=text, fields=fields, prompt=prompt,
                 input_path=input_path, output_path=output_path, few_shot=few_shot, shots=shots,
                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                 batch_size=batch_size)


@main.command()
@click.argument("results", nargs=-1, required=True)
@click.option("--out", default=None, help="Markdown table file.")
@click.option("--plot", default=None, help="Grouped bar chart PNG.")
@click.option("--side-by-side", default=None, help="Per-example predictions of every model (markdown or .html).")
@click.option("--allow-mixed", is_flag=True, help="Compare results on different test sets or few-shot settings anyway.")
@_user_errors
def compare(results, out, plot, side_by_side, allow_mixed):
    """Compare eval RESULTS files: one row per model, smallest first, one column per metric. Every path
    may be a storage URI."""
    from llmft.eval.compare import run_compare

    run_compare(list(results), out=out, plot=plot, side_by_side=side_by_side, allow_mixed=allow_mixed)


@main.command()
@_with_config
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--gpu-memory-gb", default=None, type=float,
              help="Memory of one GPU [default: 24; with --eval, eval.device_memory_gb's default].")
@click.option("--eval", "with_eval", is_flag=True,
              help="Also plan evaluation: per eval engine, GPUs per replica, replicas, memory per GPU, and what `auto` picks.")
@_user_errors
def plan(config, overrides, as_json, gpu_memory_gb, with_eval):
    """Estimate per-GPU memory for CONFIG's model under its ZeRO stage and offload."""
    from llmft.config import load_config
    from llmft.memory import run_plan

    run_plan(load_config(config, overrides), as_json=as_json, gpu_memory_gb=gpu_memory_gb, with_eval=with_eval)


@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--address", default=None, help="Ray cluster to check (default: $RAY_ADDRESS).")
@click.option("--build-ops", is_flag=True, help="First compile the DeepSpeed ops llmft uses here into the JIT cache.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_user_errors
def doctor(config, overrides, address, build_ops, as_json):
    """Report what this node has for training (like ds_report); with CONFIG, whether it can run it. Exit 1 if something needed is missing."""
    from llmft.doctor import load_optional_config, run_doctor

    sys.exit(run_doctor(load_optional_config(config, overrides), address=address, as_json=as_json, build=build_ops))


@main.command()
@_with_config
@click.option("--address", default=None, help="Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS).")
@click.option("--follow", is_flag=True, help="Stream the job's logs and exit with its status.")
@click.option("--resume", default=None,
              help="`latest` or a checkpoint path or URI that the cluster reaches: passed to `llmft train --resume`.")
@_user_errors
def submit(config, overrides, address, follow, resume):
    """Submit `llmft train CONFIG` as a Ray job."""
    from llmft.launch.submit import submit_job

    sys.exit(submit_job(config, list(overrides), address=address, follow=follow, resume=resume))


@main.group()
def jobs() -> None:
    """Follow, list and stop Ray jobs."""


def _address_option(func):
    return click.option("--address", default=None, help="Ray dashboard address (default: $RAY_ADDRESS).")(func)


@jobs.command("list")
@_address_option
@_user_errors
def jobs_list(address):
    """List jobs."""
    from llmft.launch import jobs as ray_jobs

    ray_jobs.list_jobs(address)


@jobs.command("status")
@click.argument("job_id")
@_address_option
@_user_errors
def jobs_status(job_id, address):
    """Show a job's status."""
    from llmft.launch import jobs as ray_jobs

    ray_jobs.show_status(job_id, address)


@jobs.command("logs")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Stream until the job ends.")
@_address_option
@_user_errors
def jobs_logs(job_id, follow, address):
    """Print a job's logs."""
    from llmft.launch import jobs as ray_jobs

    sys.exit(ray_jobs.show_logs(job_id, address, follow=follow))


@jobs.command("stop")
@click.argument("job_id")
@_address_option
@_user_errors
def jobs_stop(job_id, address):
    """Stop a job."""
    from llmft.launch import jobs as ray_jobs

    ray_jobs.stop_job(job_id, address)


@main.group()
def models() -> None:
    """Make and convert models."""


@models.command("make-tiny")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the model.")
@click.option("--like", default="llama", show_default=True,
              help="Architecture to shrink: a transformers model type (mistral, qwen3, gemma2, phi3, ...), "
                   "a local model folder or config.json, or a hub id whose config llmft ships or has cached.")
@click.option("--tokenizer-from", default=None, help="Copy this local tokenizer instead of training one in the family's style.")
@click.option("--layers", default=2, show_default=True)
@click.option("--hidden", default=64, show_default=True)
@click.option("--vocab", default=2048, show_default=True, help="Vocabulary of a trained tokenizer.")
@click.option("--seed", default=0, show_default=True)
@click.option("--dropout", default=0.0, show_default=True, help="Attention dropout (training then draws random numbers).")
@click.option("--tie-embeddings/--untie-embeddings", default=None,
              help="Share the input embedding with the output head, or not (default: as the architecture does).")
@_user_errors
def models_make_tiny(out, like, tokenizer_from, layers, hidden, vocab, seed, dropout, tie_embeddings):
    """Create a tiny random model of any architecture family, with a tokenizer trained on llmft's sample data."""
    from llmft.models.tiny import make_tiny_model

    make_tiny_model(out, like, num_layers=layers, hidden_size=hidden, vocab_size=vocab, seed=seed, dropout=dropout,
                    tie_embeddings=tie_embeddings, tokenizer_from=tokenizer_from)
    click.echo(out)


@models.command("import-gguf")
@click.argument("gguf_file", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the safetensors model.")
@_user_errors
def models_import_gguf(gguf_file, out):
    """Convert a GGUF Llama-architecture model to a safetensors Hugging Face folder."""
    from llmft.models.gguf import import_gguf

    import_gguf(gguf_file, out)
    click.echo(out)


if __name__ == "__main__":
    main()
