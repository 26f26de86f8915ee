"""One way from a run folder or a checkpoint to the trained model, ready to use.

:func:`load_trained` finds the checkpoint (:mod:`experiments.rundir.finder`), rebuilds the model through
:func:`lightning_models.checkpoints.model_from_checkpoint` (so the model's own ``on_load_checkpoint`` runs: a LoRA
model trained adapters-only takes its frozen base weights from the file it was started from, a language model its
tokenizer) and returns it in eval mode with what it was trained on: its input description and its tokenizer.
``predict``, ``generate`` and ``merge_lora`` load models through it; so can any program::

    from experiments.inference.loading import load_trained

    trained = load_trained("runs/digits_cnn")          # the newest run's best checkpoint, on the CPU
    logits = trained.model(batch)                      # batch normalized as trained.input_spec says

Importing this module is cheap (PyTorch is imported when a model is loaded): commands import it for ``--help``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from experiments.rundir import console, finder
from experiments.rundir.finder import Which

if TYPE_CHECKING:
    from lightning import LightningModule

    from datamodules.tokenizer import Tokenizer

#: What a model's raw output is (see :attr:`lightning_models.base.TaskModule.output_kind`).
OutputKind = Literal["logits", "logit", "value"]


@dataclass(frozen=True)
class TrainedModel:
    """A trained model rebuilt from its checkpoint.

    Attributes:
        model: The model with its trained weights, in eval mode on the device asked for (a LoRA model keeps its
            adapters; ``model.export_module()`` gives the merged equivalent).
        checkpoint: The checkpoint file it was rebuilt from.
        run: The run folder the checkpoint belongs to (``RUN`` for ``RUN/checkpoints/X.ckpt``; for a checkpoint
            elsewhere, the folder it lies in).
        input_spec: The datamodule's input description (``input_spec()``: image shape, mean and std; a table's
            fitted preprocessing; a text model's block size and, under ``tokenizer``, its tokenizer as plain data),
            or ``None`` when the datamodule gave none (language models, datamodules of your own).
        tokenizer: The tokenizer the model reads text with (the checkpoint's copy, else the run folder's
            ``tokenizer.json``), or ``None`` for models that do not read text.
        output_kind: What the model's raw output is: ``logits`` (softmax gives class probabilities), ``logit`` (one
            per input; sigmoid gives the second class's probability) or ``value`` (a regressor's standardized
            target).
        base_weights: The weights file an adapters-only LoRA checkpoint took its frozen base from (read while
            loading), else ``None``.
    """

    model: LightningModule
    checkpoint: Path
    run: Path
    input_spec: dict[str, Any] | None
    tokenizer: Tokenizer | None
    output_kind: OutputKind
    base_weights: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the model was read from (the checkpoint, its base weights): never a place for an output."""
        return (self.checkpoint,) if self.base_weights is None else (self.checkpoint, self.base_weights)


def find_checkpoint(source: str | os.PathLike, which: Which = "best") -> Path:
    """The checkpoint ``source`` names: a checkpoint file itself, or the ``which`` checkpoint of a run folder (or
    of its ``checkpoints`` folder), or of the newest run of an experiment folder that has one.

    Raises:
        UsageError: no such file or folder, or no checkpoint in it.
    """
    path = Path(source)
    if path.is_file():
        return path
    if not path.exists():
        raise console.UsageError(f"{path} does not exist: pass a run folder (runs/NAME/version_N) or a .ckpt file")
    run = finder.find_run(path, has=lambda folder: finder.run_checkpoint(folder, which) is not None)
    found = finder.run_checkpoint(run, which) if run is not None else None
    if found is None:
        wanted = "checkpoints/last.ckpt" if which == "last" else "checkpoints/*.ckpt"
        raise console.UsageError(
            f"no checkpoint in {path}: a run saves {wanted} as it trains; pass a run folder that trained for at "
            "least one validation, or a .ckpt file"
        )
    return found


def load_trained(
    source: str | os.PathLike, *, which: Which = "best", device: str = "cpu", trust: bool | None = None
) -> TrainedModel:
    """Load a trained model from a run folder, an experiment folder (its newest run) or a checkpoint file.

    Args:
        source: A ``.ckpt`` file, a run folder (``runs/NAME/version_N``), its ``checkpoints`` folder, or an
            experiment folder (``runs/NAME``: its newest run with a checkpoint).
        which: For a folder, its ``best`` checkpoint (as ``status.json`` records it) or its ``last`` one.
        device: Where the model goes (``cpu``, ``cuda``, ``cuda:1``).
        trust: Allow a checkpoint that needs code to load (only for files you trust); ``None``: as the
            environment says (:data:`fileio.checkpoints.TRUST_ENV`), weights-only by default.

    Returns:
        The model in eval mode on ``device``, with its checkpoint, run folder, input description, tokenizer and
        output kind.

    Raises:
        UsageError: one line naming the file and the fix: no such file or folder, no checkpoint, an unreadable or
            foreign file, a model class that cannot be imported, weights that do not fit it, base weights of an
            adapters-only LoRA checkpoint that are gone, a text model's tokenizer that is missing or another one
            than it was trained with.
    """
    from lightning_models.checkpoints import model_from_checkpoint

    checkpoint = find_checkpoint(source, which)
    run = finder.run_of_checkpoint(checkpoint)
    with console.user_errors():
        model, saved = model_from_checkpoint(checkpoint, trust=trust, class_path=_configured_class(run))
    spec = input_spec_of(saved)
    tokenizer = _tokenizer(model, saved, run, reads_text=bool(spec and spec.get("tokenizer")))
    if spec is not None:
        copy = saved.get("tokenizer") or (tokenizer.to_dict() if tokenizer is not None else None)
        spec = with_tokenizer(spec, copy, checkpoint)
    return TrainedModel(
        model=model.to(device),
        checkpoint=checkpoint,
        run=run,
        input_spec=spec,
        tokenizer=tokenizer,
        output_kind=_output_kind(model),
        base_weights=_base_weights(saved),
    )


def input_spec_of(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The input description a datamodule stored in the checkpoint (its ``state_dict``), if any."""
    from datamodules.base import INPUT_SPEC_KEY

    for value in checkpoint.values():
        if isinstance(value, Mapping) and isinstance(value.get(INPUT_SPEC_KEY), Mapping):
            return dict(value[INPUT_SPEC_KEY])
    return None


def with_tokenizer(spec: dict[str, Any], saved: Mapping[str, Any] | None, source: Path) -> dict[str, Any]:
    """``spec`` with the tokenizer it names (by fingerprint) filled in from the model file's own copy.

    Text datamodules name their tokenizer in the input description without copying it; the checkpoint
    (``checkpoint["tokenizer"]``) and the ONNX file (``metadata_props`` ``tokenizer``) carry it.

    Raises:
        UsageError: the model file holds no tokenizer, or another one than its inputs were made with.
    """
    named = spec.get("tokenizer")
    if not isinstance(named, Mapping) or "fingerprint" not in named:
        return spec
    from datamodules.tokenizer import tokenizer_from_dict

    if not saved:
        raise console.UsageError(
            f"{source} holds no tokenizer, but the model reads text split by a {named.get('kind')} tokenizer: "
            "predict from the run folder (its checkpoint carries the tokenizer)"
        )
    if tokenizer_from_dict(dict(saved)).fingerprint() != named["fingerprint"]:
        raise console.UsageError(
            f"{source} holds another tokenizer than the one its model was trained with (fingerprint "
            f"{named['fingerprint']}): predict from the run folder"
        )
    return {**spec, "tokenizer": dict(saved)}


# -- pieces --------------------------------------------------------------------------------------------------------
def _configured_class(run: Path) -> str | None:
    """The model class the run's ``config.yaml`` names, for a checkpoint that names none; ``None`` if unknown."""
    config = run / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    try:
        model = (yaml.safe_load(config.read_text()) or {}).get("model") or {}
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    class_path = model.get("class_path") if isinstance(model, Mapping) else None
    return class_path if isinstance(class_path, str) else None


def _tokenizer(model: Any, saved: Mapping[str, Any], run: Path, reads_text: bool) -> Tokenizer | None:
    """The tokenizer of a model that reads text: the checkpoint's copy, else the run folder's ``tokenizer.json``.

    A language model whose checkpoint holds none gets the run's file set (generation needs it).
    """
    from datamodules.tokenizer import read_tokenizer, tokenizer_from_dict
    from lightning_models.language_model import CausalLMModule

    language_model = isinstance(model, CausalLMModule)
    if language_model and model.tokenizer is not None:
        return model.tokenizer  # set from the checkpoint by the model's own on_load_checkpoint
    if isinstance(saved.get("tokenizer"), Mapping) and saved["tokenizer"]:
        with console.user_errors():
            return tokenizer_from_dict(dict(saved["tokenizer"]))
    file = finder.run_tokenizer(run) if reads_text or language_model else None
    if file is None:
        return None
    with console.user_errors():
        tokenizer = read_tokenizer(file, setting="the run's tokenizer.json")
    if language_model:
        try:
            model.set_tokenizer(tokenizer)
        except ValueError as err:  # more tokens than the model has embedding rows: another run's file
            raise console.UsageError(f"{file} does not fit the model of {run}: {err}") from None
    return tokenizer


def _output_kind(model: Any) -> OutputKind:
    from lightning_models.base import TaskModule

    return model.output_kind if isinstance(model, TaskModule) else "value"


def _base_weights(saved: Mapping[str, Any]) -> Path | None:
    """The base weights file an adapters-only LoRA checkpoint names (see ``FinetuneMethods.on_save_checkpoint``)."""
    lora = saved.get("lora")
    if isinstance(lora, Mapping) and lora.get("adapters_only") and isinstance(lora.get("base"), str):
        return Path(lora["base"])
    return None
