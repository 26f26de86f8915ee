"""Use a trained model on new inputs: ``python -m experiments.predict RUN INPUT... [options]``.

``RUN`` is a run folder (``runs/NAME/version_N``; an experiment folder ``runs/NAME`` means its newest run), a
checkpoint file, or an exported ``.onnx`` file. ``INPUT`` is what the model takes, as its datamodule declared it:
image files and folders of images, CSV/Parquet tables, or texts (lines of ``.txt`` files, ``-`` for standard
input, or the text column of CSV/TSV/JSON Lines files). Predictions go to ``RUN/predictions.csv`` (an earlier one is
kept: the next is ``predictions_1.csv``) or to ``--output`` (an existing file only with ``--force``; never an
input, a checkpoint or a file of a run folder): one row per input (file, and row for tables; ``id``
``FILE:LINE`` for texts), the predicted class name and its probability (``--topk`` for more), or the value for
regressors. The summary counts the predicted classes.

Both backends apply what training applied: the checkpoint backend (``--backend torch``, default) rebuilds the
model and its input description from the checkpoint (:func:`experiments.inference.loading.load_trained`: a LoRA run
saved adapters-only gets its base weights from the file it was started from); ``--backend onnx`` runs
``model.onnx`` with onnxruntime and reads the input description from the file's own metadata. Files that cannot be
read are listed and skipped (``--strict``: the first one is an error); inputs of the wrong kind, a table without a
training column or with an unseen category, a text file that is not UTF-8 or holds no text are one ``error:`` line,
exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.inference.loading import with_tokenizer
from experiments.rundir import console, finder
from experiments.rundir.console import USAGE_ERROR

OUTPUT_NAME = "predictions"


@dataclass
class LoadedModel:
    """A model ready to predict.

    Attributes:
        forward: Raw inputs batch (``numpy``) -> raw outputs ``(N, outputs)`` (``float32`` numpy).
        spec: The datamodule's input description.
        output_kind: ``logits``, ``logit`` or ``value`` (see ``TaskModule.output_kind``).
        source: What runs, for the summary (file, backend, device).
        home: Folder where the predictions go by default.
        files: The model files read (checkpoint or ONNX file): never a place for the predictions.
    """

    forward: Callable[[np.ndarray], np.ndarray]
    spec: dict[str, Any]
    output_kind: str
    source: str
    home: Path
    files: tuple[Path, ...] = ()


# -- finding and loading the model -----------------------------------------------------------------------------------
def _has_model(folder: Path) -> bool:
    return (folder / finder.CHECKPOINT_DIR).is_dir() or any(folder.glob("*.onnx"))


def find_run(path: Path) -> Path:
    """``path`` itself, or for an experiment folder (``runs/NAME``) its newest ``version_N`` that has a model; for a
    run's ``checkpoints`` folder, the run folder."""
    return finder.find_run(path, has=_has_model) or path


def find_checkpoint(run: Path) -> Path:
    """The run's best checkpoint (see :func:`experiments.rundir.finder.run_checkpoint`).

    Raises:
        UsageError: no checkpoint in the folder.
    """
    found = finder.run_checkpoint(run)
    if found is not None:
        return found
    folder = run / finder.CHECKPOINT_DIR
    onnx_hint = " (it has a model.onnx: pass --backend onnx)" if (run / "model.onnx").is_file() else ""
    raise console.UsageError(
        f"no checkpoint in {run}: expected {folder}/best-*.ckpt or last.ckpt{onnx_hint}; pass a run folder of a "
        "run that saved one, or --ckpt_path FILE"
    )


def _generates(class_path: Any) -> str | None:
    """The class name when ``class_path`` names a model that generates text (a language model), else ``None``."""
    from lightning_models.checkpoints import import_class
    from lightning_models.language_model import CausalLMModule

    try:
        cls = import_class(class_path) if isinstance(class_path, str) else None
    except ImportError:
        return None
    return cls.__name__ if cls is not None and issubclass(cls, CausalLMModule) and cls.generates else None


def _language_model_message(ckpt: Path, model_name: str) -> str:
    run = finder.run_of_checkpoint(ckpt)
    return (
        f"{ckpt} holds a {model_name}, a language model: it generates text rather than predicting on inputs; "
        f"use python -m experiments.generate {run} --prompt TEXT"
    )


def _onnx_language_model_hint(path: Path) -> str | None:
    """For an ONNX file without an input description: the language-model message when its run's checkpoint is one."""
    from fileio.checkpoints import load_checkpoint
    from fileio.errors import DataError

    ckpt = finder.run_checkpoint(path.parent)
    if ckpt is None:
        return None
    try:
        checkpoint = load_checkpoint(ckpt, trust=False)
    except DataError:  # an unreadable checkpoint says nothing about the ONNX file
        return None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    name = _generates(hparams.get("_class_path")) if isinstance(hparams, Mapping) else None
    return _language_model_message(ckpt, name) if name else None


def load_torch(ckpt: Path, home: Path, device: str, trust: bool | None = None) -> LoadedModel:
    """The checkpoint's model (:func:`experiments.inference.loading.load_trained`), in eval mode on ``device``,
    behind the input front end its input kind needs; predictions go to ``home`` by default."""
    import torch

    from experiments.inference.loading import load_trained
    from lightning_models.export import with_input_front
    from lightning_models.language_model import CausalLMModule

    trained = load_trained(ckpt, device=device, trust=trust)
    spec = trained.input_spec
    if spec is None:
        model = trained.model
        if isinstance(model, CausalLMModule) and model.generates:
            raise console.UsageError(_language_model_message(ckpt, type(model).__name__))
        raise console.UsageError(
            f"{ckpt} holds no input description (zerotune_input): its datamodule has no input_spec(); "
            "retrain with a zerotune datamodule, or predict from its model.onnx with --backend onnx"
        )
    net = with_input_front(trained.model, spec).eval().to(device)

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(x)).to(device))
        return out.float().cpu().numpy()

    where = f"{ckpt} (torch, {device})"
    return LoadedModel(forward, spec, trained.output_kind, where, home, trained.files)


def load_onnx(path: Path, device: str) -> LoadedModel:
    """An ONNX file in onnxruntime; its input description and output kind come from its ``metadata_props``."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for unreadable files
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise console.UsageError(f"cannot load {path} with onnxruntime: {first}") from None
    meta = session.get_modelmeta().custom_metadata_map
    if "input_spec" not in meta:
        generates = _onnx_language_model_hint(path)
        if generates:
            raise console.UsageError(generates)
        raise console.UsageError(
            f"{path} carries no input description (metadata_props 'input_spec'): it was not exported by zerotune "
            "from a zerotune datamodule; predict from its checkpoint instead"
        )
    name = session.get_inputs()[0].name
    used = session.get_providers()[0].replace("ExecutionProvider", "").lower()
    spec = with_tokenizer(json.loads(meta["input_spec"]), json.loads(meta.get("tokenizer") or "null"), path)

    def forward(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: np.ascontiguousarray(x)})[0], dtype=np.float32)

    return LoadedModel(forward, spec, meta.get("output_kind", "logits"), f"{path} (onnx, {used})", path.parent, (path,))


def load_model(target: str, backend: str | None, ckpt_path: str | None, device: str, trust: bool) -> LoadedModel:
    """Resolve ``RUN`` (folder, checkpoint or ONNX file) and load it with the requested backend.

    Raises:
        UsageError: a missing run, no checkpoint or model file, or a backend that does not fit the file.
    """
    from experiments.view import resolve_model

    path = Path(target)
    if not path.exists():
        raise console.UsageError(
            f"{path} does not exist: pass a run folder (runs/NAME/version_N), a .ckpt or an .onnx file"
        )
    if path.is_file() and path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise console.UsageError(f"{path} is an ONNX file: it runs with --backend onnx (or pass the run folder)")
        return load_onnx(path, device)
    if path.is_file():
        if backend == "onnx":
            raise console.UsageError(f"{path} is a checkpoint: --backend onnx needs the run folder or its .onnx file")
        return load_torch(path, finder.run_of_checkpoint(path), device, trust)
    run = find_run(path)
    if backend == "onnx":
        return load_onnx(resolve_model(run), device)
    ckpt = Path(ckpt_path) if ckpt_path else find_checkpoint(run)
    return load_torch(ckpt, run, device, trust)


# -- outputs to predictions ----------------------------------------------------------------------------------------
def class_probabilities(output: np.ndarray, output_kind: str) -> np.ndarray:
    """``(N, K)`` class probabilities from raw outputs: softmax of logits, or sigmoid of a single logit."""
    output = output.astype(np.float64)
    if output_kind == "logit":
        p = 1.0 / (1.0 + np.exp(-output.reshape(len(output), -1)[:, 0]))
        return np.column_stack([1.0 - p, p])
    shifted = output - output.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def prediction_columns(output: np.ndarray, loaded: LoadedModel, topk: int) -> dict[str, np.ndarray]:
    """The prediction columns of a batch: ``label``/``probability`` (top-k), or ``value`` for regressors."""
    spec = loaded.spec
    if loaded.output_kind == "value":
        values = output.astype(np.float64) * spec.get("target_std", 1.0) + spec.get("target_mean", 0.0)
        values = values.reshape(len(values), -1)
        if values.shape[1] == 1:
            return {"value": values[:, 0]}
        return {f"value_{j}": values[:, j] for j in range(values.shape[1])}
    probs = class_probabilities(output, loaded.output_kind)
    names = np.asarray(spec.get("class_names") or [str(i) for i in range(probs.shape[1])], dtype=object)
    order = np.argsort(-probs, axis=1, kind="stable")[:, : max(1, min(topk, probs.shape[1]))]
    columns: dict[str, np.ndarray] = {}
    for rank in range(order.shape[1]):
        suffix = "" if rank == 0 else f"_{rank + 1}"
        idx = order[:, rank]
        columns[f"label{suffix}"] = names[idx]
        columns[f"probability{suffix}"] = np.round(probs[np.arange(len(idx)), idx], 6)
    return columns


def default_output(home: Path) -> Path:
    """``home/predictions.csv``, or the first free ``predictions_N.csv`` (earlier predictions are never replaced)."""
    path = home / f"{OUTPUT_NAME}.csv"
    n = 1
    while path.exists():
        path = home / f"{OUTPUT_NAME}_{n}.csv"
        n += 1
    return path


class Progress:
    """A progress bar on a terminal (after a second), else a plain line every few seconds; silent for quick runs."""

    def __init__(self, total: int | None, unit: str) -> None:
        self.total, self.unit, self.done = total, unit, 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=f" {unit}", file=sys.stderr, delay=1.0, leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= 5.0:
            self.last = now
            of = f"/{self.total} ({self.done / self.total:.0%})" if self.total else ""
            print(f"predict: {self.done}{of} {self.unit}, {now - self.start:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- the command -------------------------------------------------------------------------------------------------------
def predict(args: argparse.Namespace) -> Path:
    """Run a prediction as the command-line arguments say; returns the predictions file.

    Raises:
        UsageError: anything the user can fix (printed as one line by :func:`main`).
    """
    import torch

    from experiments.inference.inputs import PredictOptions, input_kind
    from experiments.rundir.files import check_output_path
    from fileio.atomic import atomic_write

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise console.UsageError("--device cuda: no CUDA GPU is visible here; leave --device auto to use the CPU")
    options = PredictOptions(
        strict=args.strict,
        unknown_categories=args.unknown_categories,
        keep=[c.strip() for c in (args.keep or "").split(",") if c.strip()],
        workers=args.workers,
    )
    with console.user_errors():
        loaded = load_model(args.run, args.backend, args.ckpt_path, device, args.trust_checkpoint)
        kind = input_kind(loaded.spec, options)
        if options.keep and kind.name != "table":
            raise console.UsageError("--keep copies table columns: this model takes " + kind.describe())
        files = kind.collect(args.inputs)
        # Checked before any prediction is made: nothing the command reads, no file of a run, no existing file
        # without --force, and a folder it can write.
        to_stdout = args.output == "-"
        output = (
            Path("-")
            if to_stdout
            else check_output_path(
                Path(args.output) if args.output else default_output(loaded.home),
                "--output" if args.output else "the predictions file (--output)",
                inputs=[Path(args.run), *loaded.files, *files],
                force=args.force,
                example=f"{OUTPUT_NAME}.csv",
            )
        )
        skipped: list[tuple[Path, str]] = []

        def on_skip(path: Path, reason: str) -> None:
            if options.strict:
                raise console.UsageError(f"cannot read {path}: {reason} (--strict)")
            skipped.append((path, reason))

        start = time.perf_counter()
        columns: dict[str, list[np.ndarray]] = {}
        progress = Progress(kind.total(files), "rows" if kind.name == "table" else kind.unit)
        try:
            for batch in kind.batches(files, args.batch_size or kind.batch_size, on_skip):
                produced = {**batch.ids, **prediction_columns(loaded.forward(batch.x), loaded, args.topk)}
                for key, values in produced.items():
                    columns.setdefault(key, []).append(np.asarray(values))
                progress.update(len(batch.x))
        finally:
            progress.close()
        seconds = time.perf_counter() - start
    if not columns:
        reasons = "; ".join(f"{p}: {r}" for p, r in skipped[:3]) or "they hold no inputs"
        raise console.UsageError(f"none of the {len(files)} input file(s) could be read, nothing predicted: {reasons}")
    import pandas as pd

    frame = pd.DataFrame({key: np.concatenate(parts) for key, parts in columns.items()})
    unit = "rows" if kind.name == "table" else kind.unit
    if to_stdout:  # one line per input on standard output, the summary beside it on standard error
        frame.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
        print(summary(frame, loaded, unit, skipped, seconds, Path("standard output")), file=sys.stderr, flush=True)
        return output
    try:
        atomic_write(output, lambda tmp: frame.to_csv(tmp, index=False))
    except OSError as err:  # the disk filled up, or the folder changed since it was checked; nothing was replaced
        raise console.UsageError(f"cannot write {output}: {err.strerror or err}; nothing was written") from None
    print(summary(frame, loaded, unit, skipped, seconds, output, target=kind.target), flush=True)
    return output


def summary(
    frame: Any,
    loaded: LoadedModel,
    unit: str,
    skipped: list[tuple[Path, str]],
    seconds: float,
    output: Path,
    target: str | None = None,
) -> str:
    """A few lines: how many inputs with what, counts per predicted class (or the values), agreement with the
    ``target`` column (default: the spec's target), skips, where."""
    n = len(frame)
    lines = [f"predicted {n} {unit} with {loaded.source} in {seconds:.1f} s"]
    target = target or loaded.spec.get("target")
    if "label" in frame:
        counts = frame["label"].value_counts()
        names = [str(c) for c in (loaded.spec.get("class_names") or counts.index)]
        width = max(len(c) for c in [*names, "label"])
        lines.append(f"  {'label':<{width}}  {'count':>7}  share")
        lines += [f"  {c:<{width}}  {int(counts.get(c, 0)):>7}  {counts.get(c, 0) / n:5.1%}" for c in names]
        if target and target in frame:
            labelled = frame[target].notna()
            if labelled.any():
                hits = frame[target][labelled].astype(str) == frame["label"][labelled].astype(str)
                lines.append(
                    f"  accuracy against the '{target}' column: {hits.mean():.4f} on {int(labelled.sum())} rows"
                )
    elif "value" in frame:
        v = frame["value"]
        lines.append(f"  value: mean {v.mean():.4g}, min {v.min():.4g}, max {v.max():.4g}")
        if target and target in frame:
            truth = pd_numeric(frame[target])
            ok = ~np.isnan(truth)
            if ok.any():
                mae = float(np.abs(truth[ok] - v.to_numpy()[ok]).mean())
                lines.append(f"  mean absolute error against the '{target}' column: {mae:.4g} on {int(ok.sum())} rows")
    if skipped:
        lines.append(f"skipped {len(skipped)} file(s) that could not be read:")
        lines += [f"  {path}: {reason}" for path, reason in skipped]
    lines.append(f"predictions  {output}")
    return "\n".join(lines)


def pd_numeric(series: Any) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.predict",
        description="Predict with a trained run on new images, table rows or texts; writes a CSV of predictions.",
    )
    parser.add_argument("run", help="run folder (runs/NAME/version_N), experiment folder, .ckpt or .onnx file")
    parser.add_argument(
        "inputs",
        nargs="+",
        help="what the model takes: image files or folders, CSV/Parquet tables, .txt files of texts (- for stdin)",
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default=None,
        help="torch (the checkpoint, default) or onnx (model.onnx in onnxruntime)",
    )
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to use instead of the run's best")
    parser.add_argument(
        "--output",
        default=None,
        help="predictions CSV (default: RUN/predictions.csv, never replacing one); - prints it on standard output",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --output file (never an input, a checkpoint or a file of a run folder)",
    )
    parser.add_argument(
        "--topk", type=int, default=1, help="classes (with probabilities) per input, best first (default 1)"
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="inputs per forward pass (default: 256 images or texts, 4096 table rows)",
    )
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: a GPU when there is one"
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on the first unreadable file instead of skipping it"
    )
    parser.add_argument(
        "--unknown_categories",
        choices=["error", "ignore"],
        default="error",
        help="tables: a category never seen in training is an error (default) or encoded as no category",
    )
    parser.add_argument("--keep", default=None, help="tables: comma-separated columns copied into the predictions")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding images (default 4)")
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="allow checkpoints that need code to load (only files you trust)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 for anything the user can fix)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    console.quiet()
    if args.topk < 1 or (args.batch_size is not None and args.batch_size < 1) or args.workers < 1:
        console.error("--topk, --batch_size and --workers must be at least 1")
        return USAGE_ERROR
    try:
        predict(args)
    except console.UsageError as err:
        console.error(str(err))
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
