"""Write a fine-tuned run in the Hugging Face layout: ``python -m experiments.export_hf RUN_DIR|CKPT [--out DIR]``.

The run must have started from a Hugging Face encoder (``--model.pretrained`` a model folder or ``hf:ORG/NAME``) and
pool with its pooler (``--model.pooling pooler``, the ``sst2_minilm`` recipes' default). The folder written
(default ``RUN_DIR/hf``) holds ``config.json`` (``architectures``: ``BertForSequenceClassification`` ...; the class
names as ``id2label``), ``model.safetensors`` (LoRA adapters merged) and the tokenizer files, and loads with
``transformers.AutoModelForSequenceClassification.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``,
or as ``--model.pretrained DIR`` of another run. An existing folder is replaced only with ``--force``, and only when
it is an earlier export.
"""

from __future__ import annotations

import argparse
import sys

from experiments.rundir import console
from experiments.rundir.console import USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 success, 2 usage or data error)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.export_hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("source", help="a run folder (its best checkpoint) or a .ckpt file")
    parser.add_argument("--out", help="the folder to write (default: RUN_DIR/hf)")
    parser.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console.quiet()
    try:
        from experiments.inference.hf_export import export_hf

        with console.user_errors():
            folder = export_hf(args.source, args.out, force=args.force)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    print(f"wrote {folder}: load it with transformers.AutoModelForSequenceClassification.from_pretrained('{folder}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
