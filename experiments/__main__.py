"""zerotune's commands: ``python -m experiments COMMAND [options]``, or ``zerotune COMMAND [options]``.

One table (:data:`COMMANDS`) names every command and the module behind it; ``python -m experiments`` (or ``--help``)
lists them, ``COMMAND --help`` explains one. Each command runs the same as ``python -m experiments.COMMAND``.
Listing the commands reads this file alone: it answers at once, without importing PyTorch.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from importlib import metadata

#: ``command: (module, what it does)``; the module's ``main(argv)`` runs it and returns the exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("experiments.run", "train a named experiment (or a YAML of your own), test it and export it to ONNX"),
    "runs": ("experiments.runs", "list runs and how each one stands (the command that resumes it, if any)"),
    "predict": ("experiments.predict", "predict with a run or its ONNX file on new images, tables or texts"),
    "generate": ("experiments.generate", "sample text from a language model's run, streamed as it comes"),
    "view": ("experiments.view", "open a run's ONNX graph in Netron, on this machine only"),
    "sweep": ("experiments.sweep", "tune an experiment's settings with Optuna: samplers, pruning, workers"),
    "lr_find": ("experiments.lr_find", "learning-rate range test: the suggested rate and the command to train at it"),
    "export_hf": ("experiments.export_hf", "write a fine-tuned Hugging Face encoder back in the Hugging Face layout"),
    "merge_lora": ("experiments.merge_lora", "fold a LoRA run's adapters into full weights (.safetensors)"),
    "bench": ("experiments.bench", "throughput and time to accuracy against hand-written PyTorch loops"),
    "bench_gpt": ("experiments.bench_gpt", "GPT tokens/s against a hand-written loop, and the race against nanoGPT"),
    "bench_hf": ("experiments.bench_hf", "fine-tuning race on SST-2: a plain transformers loop against zerotune"),
    "bench_table": ("experiments.bench_table", "time a large CSV table from file to first training batch"),
    "transfer": ("experiments.transfer", "demo: pre-train on digits 0-4, learn 5-9 from a few images per class"),
    "finetune_demo": ("experiments.finetune_demo", "demo: pre-train a GPT, fine-tune it full, partial and LoRA"),
}
USAGE = "usage: zerotune COMMAND [options]   (or: python -m experiments COMMAND [options])"


def print_commands() -> None:
    """The usage line and one line per command."""
    width = max(map(len, COMMANDS))
    lines = [USAGE, "", "Commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "Run 'zerotune COMMAND --help' for the options of one."]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run ``argv[0]`` with the rest of ``argv``; returns its exit code (2 for an unknown command)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_commands()
        return 0
    if argv[0] == "--version":
        try:
            print(f"zerotune {metadata.version('zerotune')}")
        except metadata.PackageNotFoundError:
            print("zerotune (not installed)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from experiments.rundir.console import USAGE_ERROR

        close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        print(f"error: unknown command '{name}'; {hint}the commands are {', '.join(COMMANDS)}", file=sys.stderr)
        return USAGE_ERROR
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except SystemExit as done:  # argparse ends --help (0) and its own usage errors (2) this way
        return done.code if isinstance(done.code, int) else int(done.code is not None)


if __name__ == "__main__":
    sys.exit(main())
