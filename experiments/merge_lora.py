"""Fold a LoRA run's adapters into its weights: ``python -m experiments.merge_lora RUN_DIR|CKPT [--out FILE]``.

The checkpoint (a run folder's best one, or the ``.ckpt`` given; adapters-only checkpoints get their base weights
from the file the run was started from) is rebuilt through the project's safe loader, every adapter is merged into
its weight (``W + alpha / r * B @ A``) and the plain model's weights are written as one ``.safetensors`` file. That
file is an ordinary set of weights: ``--model.pretrained merged.safetensors`` starts a new run from it (any
``finetune`` method, more LoRA included), and the run's ``model.onnx`` was already exported merged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import console

USAGE_ERROR = 2


def find_checkpoint(path: Path) -> Path:
    """``path`` if it is a file, else the best checkpoint of the run folder (``best-*.ckpt``, else ``last.ckpt``)."""
    if path.is_file():
        return path
    folder = path / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise console.UsageError(f"{path}: not a checkpoint file, and no checkpoints/*.ckpt in it (pass a run folder)")


def merge(checkpoint: Path, out: Path) -> tuple[int, int]:
    """Write the merged weights of ``checkpoint`` to ``out``; returns (adapted layers, tensors written)."""
    from safetensors.torch import save_file

    from lightning_models.checkpoints import model_from_checkpoint
    from lightning_models.peft import LoRALinear

    model, _ = model_from_checkpoint(checkpoint)
    adapted = sum(isinstance(m, LoRALinear) for m in model.modules())
    if not adapted:
        raise console.UsageError(f"{checkpoint} has no LoRA adapters (its run used finetune full or partial)")
    model.merge_lora()
    # safetensors stores each tensor once: a tied weight (GPT's output layer) is written under each name.
    seen: set[int] = set()
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        tensors[key] = value.clone() if value.data_ptr() in seen else value
        seen.add(value.data_ptr())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"merged_from": str(checkpoint)})
    return adapted, len(tensors)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 usage or data error)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.merge_lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("source", help="a run folder (its best checkpoint) or a .ckpt file of a LoRA run")
    parser.add_argument("--out", help="output .safetensors file (default: RUN_DIR/merged.safetensors)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console.quiet()
    try:
        with console.user_errors():
            source = Path(args.source)
            if not source.exists():
                raise console.UsageError(f"{source}: no such run folder or checkpoint")
            checkpoint = find_checkpoint(source)
            run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
            out = Path(args.out) if args.out else run_dir / "merged.safetensors"
            adapted, count = merge(checkpoint, out)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    print(f"merged {adapted} LoRA layers of {checkpoint} into {out} ({count} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
