"""Fold a LoRA run's adapters into its weights: ``python -m experiments.merge_lora RUN_DIR|CKPT [--out FILE]``.

The checkpoint (a run folder's best one, or the ``.ckpt`` given; adapters-only checkpoints get their base weights
from the file the run was started from) is rebuilt through the project's safe loader, every adapter is merged into
its weight (``W + alpha / r * B @ A``) and the plain model's weights are written as one ``.safetensors`` file. That
file is an ordinary set of weights: ``--model.pretrained merged.safetensors`` starts a new run from it (any
``finetune`` method, more LoRA included), and the run's ``model.onnx`` was already exported merged.

The file is written atomically (a failed write leaves nothing behind). An existing ``--out`` file is replaced only
with ``--force``; the checkpoint read, its base weights, any other checkpoint and the files of a run folder are
never written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.rundir import console
from experiments.rundir.console import USAGE_ERROR

if TYPE_CHECKING:
    from experiments.inference.loading import TrainedModel

OUTPUT_NAME = "merged.safetensors"


def base_weights(trained: TrainedModel) -> list[Path]:
    """The weights file a LoRA checkpoint was started from (its base), if it names one: read by an adapters-only
    checkpoint, named by ``model.pretrained`` in any."""
    pretrained = trained.model.hparams.get("pretrained")
    named = [trained.base_weights, Path(pretrained) if isinstance(pretrained, str) and pretrained else None]
    return [p for p in named if p is not None]


def merge(checkpoint: Path, out: Path, force: bool = False, option: str = "--out") -> tuple[int, int]:
    """Write the merged weights of ``checkpoint`` to ``out`` atomically; returns (adapted layers, tensors written).

    ``force`` replaces an existing ``out`` (see :func:`experiments.rundir.files.check_output_path`); ``option``
    names it.

    Raises:
        UsageError: no adapters, an output that would replace an input or a run's file, or a failed write.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from experiments.inference.loading import load_trained
    from experiments.rundir.files import check_output_path
    from fileio.atomic import atomic_path
    from lightning_models.peft import FinetuneMethods, LoRALinear

    trained = load_trained(checkpoint)
    model = trained.model
    adapted = sum(isinstance(m, LoRALinear) for m in model.modules())
    if not adapted or not isinstance(model, FinetuneMethods):
        raise console.UsageError(f"{checkpoint} has no LoRA adapters (its run used finetune full or partial)")
    # The base weights are known once the checkpoint is read: they are an input too.
    check_output_path(out, option, inputs=[checkpoint, *base_weights(trained)], force=force, example=OUTPUT_NAME)
    model.merge_lora()
    # safetensors stores each tensor once: a tied weight (GPT's output layer) is written under each name.
    seen: set[int] = set()
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        tensors[key] = value.clone() if value.data_ptr() in seen else value
        seen.add(value.data_ptr())
    try:
        with atomic_path(out) as tmp:
            save_file(tensors, str(tmp), metadata={"merged_from": str(checkpoint)})
    except (OSError, SafetensorError) as err:  # a full disk, or the folder changed since it was checked
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
        raise console.UsageError(f"cannot write {out}: {reason}; nothing was written") from None
    return adapted, len(tensors)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 usage or data error)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.merge_lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("source", help="a run folder (its best checkpoint) or a .ckpt file of a LoRA run")
    parser.add_argument("--out", help=f"output .safetensors file (default: RUN_DIR/{OUTPUT_NAME})")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out file (never a checkpoint, its base weights or a file of a run folder)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console.quiet()
    try:
        from experiments.inference.loading import find_checkpoint
        from experiments.rundir.files import check_output_path
        from experiments.rundir.finder import run_of_checkpoint

        with console.user_errors():
            source = Path(args.source)
            if not source.exists():
                raise console.UsageError(f"{source}: no such run folder or checkpoint")
            checkpoint = find_checkpoint(source)
            run_dir = run_of_checkpoint(checkpoint)
            out = Path(args.out) if args.out else run_dir / OUTPUT_NAME
            # Checked before the checkpoint is read, so that a mistake costs nothing.
            option = "--out" if args.out else "the merged weights file (--out)"
            check_output_path(out, option, inputs=[source, checkpoint], force=args.force, example=OUTPUT_NAME)
            adapted, count = merge(checkpoint, out, force=args.force, option=option)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    print(f"merged {adapted} LoRA layers of {checkpoint} into {out} ({count} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
