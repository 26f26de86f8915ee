"""Generate text with a trained language model, streaming it to the terminal as it is produced.

    python -m experiments.generate RUN_DIR [--prompt "def "] [--max_new_tokens 200] [--temperature 0.8]
        [--top_k 50] [--top_p 0.95] [--seed 0] [--num_samples 1] [--checkpoint best|last|PATH] [--device auto]

``RUN_DIR`` is a run folder (``runs/stdlib_gpt/version_0``), an experiment folder (its newest run with a
checkpoint) or a ``.ckpt`` file. The model is rebuilt from the checkpoint through the project's safe loader
(``weights_only``; ``--trust_checkpoint true`` for files that need code to load) and uses the tokenizer stored in the
checkpoint (or the run folder's ``tokenizer.json``). With a key/value cache each new token costs one position's
forward pass (``--no_cache`` to compare). Sampling: ``--temperature`` scales the logits (0: always the most likely
token), ``--top_k`` keeps the k most likely tokens, ``--top_p`` the smallest set whose probability reaches p.

Mistakes (a non-finite temperature, a prompt that is not UTF-8, a device that is not here) are one ``error:`` line,
exit code 2. Piped into a reader that stops early (``| head``), the command stops quietly with exit code 141, as
Unix tools killed by SIGPIPE do.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.rundir import console, finder
from experiments.rundir.console import USAGE_ERROR
from experiments.rundir.finder import Which

if TYPE_CHECKING:
    from experiments.inference.loading import TrainedModel

#: Exit code when standard output's reader went away: what a shell reports for a process killed by SIGPIPE.
BROKEN_PIPE = 128 + signal.SIGPIPE


def load_language_model(
    source: str | Path, which: Which = "best", device: str = "cpu", trust: bool | None = None
) -> TrainedModel:
    """The language model ``source`` names (see :func:`experiments.inference.loading.load_trained`), with its
    tokenizer (from the checkpoint or the run folder's ``tokenizer.json``).

    Raises:
        console.UsageError: no checkpoint, a model that cannot generate, or no tokenizer anywhere.
    """
    from experiments.inference.loading import load_trained
    from lightning_models.language_model import CausalLMModule

    trained = load_trained(source, which=which, device=device, trust=trust)
    model, checkpoint = trained.model, trained.checkpoint
    if not (isinstance(model, CausalLMModule) and model.generates):
        raise console.UsageError(
            f"{checkpoint} holds a {type(model).__name__}, which does not generate text; pass a language model's run"
        )
    if trained.tokenizer is None:
        saved = trained.run / finder.TOKENIZER_FILE
        if saved.is_dir():
            raise console.UsageError(
                f"no tokenizer for {checkpoint}: the checkpoint holds none, and {saved} is a folder, not a tokenizer "
                "file. Generation needs the tokenizer the model was trained with; put the run's tokenizer.json there"
            )
        raise console.UsageError(
            f"no tokenizer for {checkpoint}: the checkpoint holds none and there is no {saved}. Generation needs "
            "the tokenizer the model was trained with; copy the run's tokenizer.json there"
        )
    return trained


def check_prompt(prompt: str) -> None:
    """Raises: UsageError for a prompt that is not UTF-8 text (the shell passed bytes Python could not decode)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = ord(prompt[err.start])
        # Undecodable argument bytes arrive as lone surrogates U+DC80..U+DCFF (PEP 383): name the byte.
        what = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"character U+{bad:04X}"
        raise console.UsageError(
            f"--prompt is not UTF-8 text ({what} at character {err.start}): pass the prompt as UTF-8 text"
        ) from None


def torch_device(name: str) -> str:
    """The device ``--device`` names (``auto``: a CUDA GPU when there is one, else the CPU).

    Raises:
        UsageError: a name that is no device, or a device that is not here.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise console.UsageError(f"--device {name} is not a device: pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise console.UsageError(
                f"--device {name}: no CUDA GPU is visible here; leave --device auto to use the CPU"
            )
        if device.index is not None and device.index >= count:
            raise console.UsageError(f"--device {name}: this machine has {count} CUDA GPU(s), numbered from cuda:0")
        return str(device)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # torch says "not compiled with ..." through either
        # torch's first sentence says what is missing; the rest lists its dispatch keys.
        first = str(err).strip().split(". ")[0].splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise console.UsageError(f"--device {name} cannot be used here ({first}); leave --device auto") from None
    return str(device)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a usage error)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.generate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", help="run folder (runs/NAME/version_N), experiment folder, or .ckpt file")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--max_new_tokens", type=int, default=200, help="tokens to generate (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="logit scale; 0: greedy (default 0.8)")
    parser.add_argument("--top_k", type=int, default=50, help="sample among the k most likely tokens (default 50)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass, e.g. 0.95 (default off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--num_samples", type=int, default=1, help="independent samples (default 1)")
    parser.add_argument("--checkpoint", default="best", help="best (default), last, or a .ckpt path")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    parser.add_argument("--no_cache", action="store_true", help="recompute every position for every token")
    parser.add_argument(
        "--trust_checkpoint",
        type=lambda s: s.lower() in ("1", "true", "yes"),
        default=False,
        help="allow checkpoints that need arbitrary code to load (only for files you trust)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console.quiet()
    try:
        with console.user_errors():
            return _generate(args)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as Unix tools do. Standard output now points nowhere,
        # so that Python's final flush at exit does not report the broken pipe once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE


def _generate(args: argparse.Namespace) -> int:
    if args.num_samples < 1:
        raise console.UsageError(f"--num_samples must be >= 1, got {args.num_samples}")
    if not math.isfinite(args.temperature):
        raise console.UsageError(
            f"--temperature must be a number >= 0 (0: always the most likely token), got {args.temperature}"
        )
    check_prompt(args.prompt)
    device = torch_device(args.device)
    which = args.checkpoint if args.checkpoint in ("best", "last") else None
    source = args.checkpoint if which is None else args.path
    trained = load_language_model(source, which or "best", device, trust=args.trust_checkpoint)
    model, checkpoint = trained.model, trained.checkpoint
    started = False

    def show(text: str) -> None:
        nonlocal started
        if not started:  # the prompt and the settings passed their checks: say where the text comes from
            print(f"# {type(model).__name__} from {checkpoint}", file=sys.stderr, flush=True)
            started = True
        sys.stdout.write(text)
        sys.stdout.flush()

    for i in range(args.num_samples):
        if i:
            show("\n" + "-" * 40 + "\n")
        try:
            model.generate_text(
                args.prompt,
                args.max_new_tokens,
                args.temperature,
                args.top_k,
                args.top_p,
                args.seed + i,
                use_cache=not args.no_cache,
                on_text=show,
                echo_prompt=True,
            )
        except ValueError as err:
            raise console.UsageError(str(err)) from None
    show("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
