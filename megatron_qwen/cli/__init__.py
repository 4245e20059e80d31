"""`megatron-qwen <command> ...`: the one command line of the project (the top layer: it may import all others).

Each command is a module with `main(argv) -> exit status`; the table below is the only list of them, and a
command's module is imported only when it runs (so `--help` and light commands start fast). Exit status 2
with a one-line `error: ...` is the rule for bad input, everywhere.
"""

from __future__ import annotations

import importlib
import sys

from megatron_qwen.config import ConfigError

# name -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("megatron_qwen.cli.train", "train one stage: Hydra overrides, e.g. experiment=tiny_cpu train.train_iters=20"),
    "launch": ("megatron_qwen.launch.cli", "compose, validate and submit stages to Slurm (or run them locally), chained"),
    "status": ("megatron_qwen.launch.status", "each stage of a run: state, last step and loss, checkpoint, restarts"),
    "preprocess": ("megatron_qwen.data.preprocess.cli", "JSONL records or repositories -> Megatron indexed datasets"),
    "corpus": ("megatron_qwen.corpus.cli", "datatrove corpus pipeline: language ID, filters, dedup -> indexed shards"),
    "corpus-train-langid": ("megatron_qwen.corpus.langid",
                            "train the fastText code language classifier on extension-labelled files"),
    "corpus-train-quality": ("megatron_qwen.corpus.quality",
                             "train a fastText quality classifier (one stage) from positive/negative seeds"),
    "decontaminate": ("megatron_qwen.data.decontamination.cli", "drop JSONL records sharing a 10-gram with benchmarks"),
    "make-ast-fim": ("megatron_qwen.data.preprocess.ast_fim_mix", "AST-FIM conversations from code, mixed into SFT data"),
    "train-tokenizer": ("megatron_qwen.cli.train_tokenizer", "train a small Qwen2-shaped BPE tokenizer (demo, tests)"),
    "blend-shares": ("megatron_qwen.training.datasets.blend", "the token shares a run would sample from a blend"),
    "convert": ("megatron_qwen.cli.convert", "Hugging Face <-> Megatron checkpoints: import-hf, export-hf, export-lora, verify"),
    "plan": ("megatron_qwen.cli.plan", "memory plan of a TP/PP/CP layout, or search the layouts that fit"),
    "needle": ("megatron_qwen.cli.needle", "Needle-in-the-Code long-context evaluation of a checkpoint"),
    "evaluate": ("megatron_qwen.cli.evaluate", "code benchmarks: a model (--checkpoint/--hf) or a completions file (--samples)"),
    "serve": ("megatron_qwen.cli.serve", "OpenAI-compatible completions server (/v1/completions, /v1/chat/completions)"),
    "synth": ("megatron_qwen.synth.cli", "synthesize verified SFT records and DPO pairs from code via an OpenAI-compatible server"),
    "sandbox": ("megatron_qwen.sandbox.cli", "run one program in the execution sandbox, print its result as JSON"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: megatron-qwen <command> [arguments]   (megatron-qwen <command> --help for its arguments)", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    saved, sys.argv = sys.argv, [f"megatron-qwen {name}", *rest]  # argparse's prog, and Hydra reads sys.argv
    try:
        return int(module.main(rest) or 0)
    except SystemExit as stop:  # `raise SystemExit("error: ...")` in a command: one line, status 2
        if isinstance(stop.code, str):
            print(stop.code if stop.code.startswith("error") else f"error: {stop.code}", file=sys.stderr)
            return 2
        return stop.code or 0
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
