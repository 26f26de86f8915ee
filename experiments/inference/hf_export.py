"""A fine-tuned Hugging Face encoder back in the Hugging Face layout, for ``transformers`` and the Hub.

A :class:`~lightning_models.SequenceClassifier` whose body came from a Hugging Face model (it keeps that model's
``config.json`` as ``hf_config``) and that pools with BERT's pooler (``pooling: pooler``) is exactly a
``BertForSequenceClassification`` (or ``RobertaForSequenceClassification``): :func:`export_hf` writes its weights
(``model.safetensors``, LoRA adapters merged), its ``config.json`` (with ``architectures``, the class count and
the class names as ``id2label``) and its tokenizer (``tokenizer.json``, ``special_tokens_map.json``,
``tokenizer_config.json``) into a folder that ``AutoModelForSequenceClassification.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load, and that ``--model.pretrained`` takes again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from experiments.inference.loading import load_trained
from experiments.rundir.console import UsageError
from fileio.atomic import atomic_write_text
from fileio.errors import DataError
from lightning_models.hf_encoders import to_hf_classifier

#: The folder a run's export goes to by default, inside the run folder.
EXPORT_FOLDER = "hf"
#: Metadata key of an export's ``model.safetensors``: the checkpoint it was exported from.
EXPORT_MARK = "zerotune_export_of"


def export_hf(source: str | os.PathLike, out: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write the run (or checkpoint) ``source`` as a Hugging Face model folder ``out`` (default ``RUN/hf``).

    Args:
        source: A run folder (its best checkpoint) or a ``.ckpt`` file.
        out: The folder to write; it must not exist, or be an earlier export when ``force``.
        force: Replace an earlier export there (a folder whose ``model.safetensors`` this function wrote), never
            another folder.

    Returns:
        The folder written.

    Raises:
        UsageError: a model that is not a Hugging Face body with a pooler, or an output folder that exists.
    """
    from safetensors.torch import save_file

    from datamodules.tokenizer import PretrainedTokenizer

    trained = load_trained(source)
    model = trained.model
    config = model.hparams.get("hf_config")
    if config is None:
        raise UsageError(
            f"{trained.checkpoint} was not fine-tuned from a Hugging Face model (model.pretrained a model folder or "
            "hf:ORG/NAME): only those export to the Hugging Face layout; its run's model.onnx serves it"
        )
    if model.hparams.get("pooling") != "pooler":
        raise UsageError(
            f"{trained.checkpoint} pools with '{model.hparams.get('pooling')}': a Hugging Face sequence classifier "
            "reads BERT's pooler, so train with --model.pooling pooler to export (its model.onnx serves any pooling)"
        )
    folder = Path(out) if out is not None else trained.run / EXPORT_FOLDER
    if folder.exists():
        earlier = is_export(folder)
        if not (force and earlier):
            why = "pass --force to replace that earlier export" if earlier else "pass a new folder with --out"
            raise UsageError(f"{folder} exists; {why}")
    names = (trained.input_spec or {}).get("class_names") or [str(i) for i in range(model.num_classes)]
    state = {k: v.detach().cpu().contiguous() for k, v in model.export_module().state_dict().items()}
    try:
        tensors, hf_config = to_hf_classifier(state, config, [str(n) for n in names])
    except DataError as err:  # a family without a pooler and a linear head (DistilBERT)
        raise UsageError(f"{trained.checkpoint}: {err}") from None
    # Written beside the target under a name of its own, then swapped in: an earlier export is replaced only once
    # the new one is complete, and no other folder is ever touched.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", EXPORT_MARK: str(trained.checkpoint)})
    atomic_write_text(tmp / "config.json", json.dumps(hf_config, indent=2) + "\n")
    tokenizer = trained.tokenizer
    if isinstance(tokenizer, PretrainedTokenizer):
        atomic_write_text(tmp / "tokenizer.json", tokenizer.spec)
        atomic_write_text(tmp / "special_tokens_map.json", json.dumps(tokenizer.special_tokens, indent=2) + "\n")
        settings = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": int(
                (trained.input_spec or {}).get("block_size") or hf_config["max_position_embeddings"]
            ),
            **tokenizer.special_tokens,
        }
        atomic_write_text(tmp / "tokenizer_config.json", json.dumps(settings, indent=2) + "\n")
    if folder.exists():
        old = folder.rename(Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent)) / folder.name)
        tmp.rename(folder)
        shutil.rmtree(old.parent)
    else:
        tmp.rename(folder)
    return folder


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an earlier :func:`export_hf` (its ``model.safetensors`` says so in its metadata), the
    only kind of folder ``force`` replaces: a model folder from anywhere else, the run's own base model included,
    never is."""
    from safetensors import SafetensorError, safe_open

    weights = folder / "model.safetensors"
    if not weights.is_file():
        return False
    try:
        with safe_open(str(weights), "pt") as f:
            return EXPORT_MARK in (f.metadata() or {})
    except (OSError, SafetensorError):
        return False
