"""Declared interfaces: what the launcher, the callbacks and the commands read of a model or a datamodule is declared
on the bases (``TaskModule``, ``DataModule``) with a default, so they read it instead of probing with ``getattr``;
``lightning_models`` and ``datamodules`` themselves probe none of their own types."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import ROOT
from torch import nn

import datamodules
import lightning_models
from datamodules import DataModule, InMemoryDataModule, MNISTDataModule, TextDataModule
from datamodules.tokenizer import ByteTokenizer
from experiments.callbacks.throughput import Throughput
from lightning_models import (
    BERT,
    GPT,
    LinearRegression,
    MLPClassifier,
    ResNet18Classifier,
    SequenceClassifier,
    TaskModule,
    ViT,
)
from lightning_models.base import CountsFlops, ExposesAttention
from lightning_models.checkpoints import compare_state_dict
from lightning_models.export import export_onnx
from lightning_models.finetune import FreezeSchedule, load_pretrained
from lightning_models.peft import LoRALinear

TINY_TEXT = {"vocab_size": 16, "block_size": 4, "n_layer": 1, "n_head": 1, "n_embd": 8}


def task_modules() -> list[type[TaskModule]]:
    found = [getattr(lightning_models, name) for name in lightning_models.__all__]
    return [c for c in found if isinstance(c, type) and issubclass(c, TaskModule)]


@pytest.mark.parametrize("cls", task_modules(), ids=lambda c: c.__name__)
def test_every_model_declares_what_is_read_of_it(cls: type[TaskModule]) -> None:
    assert (cls.monitor, cls.monitor_mode) in {("val/acc", "max"), ("val/loss", "min")}
    assert cls.output_kind in ("logits", "logit", "value")
    assert cls.task in ("classification", "regression", "language_modeling")
    assert cls.onnx_dynamic_axes[0] == "batch"
    assert cls.tokenizer is None  # until a text datamodule or a checkpoint gives one
    for method in ("predict_output", "export_module", "optional_checkpoint_keys", "convert_pretrained",
                   "backbone_module", "set_tokenizer"):  # fmt: skip
        assert callable(getattr(cls, method)), method


def test_the_defaults_of_a_plain_model() -> None:
    model = MLPClassifier(input_shape=(4,), num_classes=3, hidden=[8])
    assert model.export_module() is model
    assert model.optional_checkpoint_keys() == set()
    state = {"net.1.weight": torch.zeros(1)}
    assert model.convert_pretrained(state, "file.pt") is state
    assert model.backbone_module() is None
    assert not isinstance(model, CountsFlops) and not isinstance(model, ExposesAttention)
    assert model.onnx_dynamic_axes == {0: "batch"} and model.tokenizer is None


def test_what_the_models_that_differ_declare() -> None:
    gpt = GPT(**TINY_TEXT)
    assert gpt.onnx_dynamic_axes == {0: "batch", 1: "sequence"}
    assert isinstance(gpt, CountsFlops) and gpt.flops_per_token(4) == 6 * gpt.num_params() + 12 * 1 * 1 * 8 * 4
    assert (gpt.monitor, gpt.monitor_mode, gpt.task) == ("val/loss", "min", "language_modeling")
    resnet = ResNet18Classifier(input_shape=(3, 8, 8), num_classes=2)
    assert resnet.backbone_module() is resnet.backbone and not resnet.freeze_backbone
    lora = SequenceClassifier(num_classes=2, finetune="lora", **TINY_TEXT)
    merged = lora.export_module()
    assert merged is not lora and not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert "backbone.h.0.attn.qkv.weight" in lora.optional_checkpoint_keys()
    assert LinearRegression.monitor == "val/loss"


def test_the_models_that_count_flops_or_show_attention_declare_it() -> None:
    """The protocols name exactly the models that have the method, so a caller that asks ``isinstance`` gets the
    answer the method's presence gave."""
    counting = {c for c in task_modules() if issubclass(c, CountsFlops)}
    showing = {c for c in task_modules() if issubclass(c, ExposesAttention)}
    assert counting == {GPT, BERT} and showing == {ViT}
    for cls in task_modules():
        assert issubclass(cls, CountsFlops) == callable(getattr(cls, "flops_per_token", None))
        assert issubclass(cls, ExposesAttention) == callable(getattr(cls, "attention_maps", None))


def test_throughput_is_measured_for_the_models_that_count_flops_only() -> None:
    plain = MLPClassifier(input_shape=(4,), num_classes=3, hidden=[8])
    assert Throughput()._active(GPT(**TINY_TEXT)) and not Throughput()._active(plain)


def test_only_zerotune_models_leave_checkpoint_keys_out() -> None:
    lora = SequenceClassifier(num_classes=2, finetune="lora", **TINY_TEXT)
    base_keys = lora.optional_checkpoint_keys()
    adapters = {k: v for k, v in lora.state_dict().items() if k not in base_keys}
    assert base_keys and not compare_state_dict(lora, adapters)

    class Wrapped(nn.Module):  # the same keys in a module that declares nothing: every key is required
        def __init__(self) -> None:
            super().__init__()
            self.inner = lora

        def optional_checkpoint_keys(self) -> set[str]:
            return base_keys

        def state_dict(self, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
            return lora.state_dict()

    assert set(compare_state_dict(Wrapped(), adapters).missing) == base_keys


def test_the_onnx_export_keeps_a_models_declared_axes(tmp_path: Path) -> None:
    import onnx

    class Fixed(GPT):
        onnx_dynamic_axes = {0: "batch"}  # a model that declares a fixed sequence length

    torch.manual_seed(0)
    x = torch.randint(0, 16, (2, 4))
    for cls, names in ((GPT, ["batch", "sequence"]), (Fixed, ["batch", ""])):
        path = tmp_path / f"{cls.__name__}.onnx"
        export_onnx(cls(**TINY_TEXT).eval(), x, path)
        dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == names


def test_pretrained_files_are_converted_by_the_model_that_declares_how(tmp_path: Path) -> None:
    class Renaming(MLPClassifier):
        def convert_pretrained(self, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
            return {k.replace("old.", "net."): v for k, v in state.items()}

    model = Renaming(input_shape=(4,), num_classes=3, hidden=[8])
    weights = {k.replace("net.", "old."): torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    torch.save(weights, tmp_path / "w.pt")
    report = load_pretrained(model, tmp_path / "w.pt")
    assert len(report.loaded) == report.total == 4 and all((v == 0.5).all() for v in model.state_dict().values())


def test_the_freeze_schedule_finds_the_backbone_by_name() -> None:
    resnet = ResNet18Classifier(input_shape=(3, 8, 8), num_classes=2)
    assert FreezeSchedule(1)._backbone(resnet) is resnet.backbone
    assert FreezeSchedule(1, module="head")._backbone(resnet) is resnet.head
    with pytest.raises(ValueError, match="MLPClassifier has no 'backbone' module"):
        FreezeSchedule(1)._backbone(MLPClassifier(input_shape=(4,), num_classes=3, hidden=[8]))


def data_modules() -> list[type[L.LightningDataModule]]:
    found = [getattr(datamodules, name) for name in datamodules.__all__]
    return [c for c in found if isinstance(c, type) and issubclass(c, L.LightningDataModule)]


@pytest.mark.parametrize("cls", data_modules(), ids=lambda c: c.__name__)
def test_every_datamodule_declares_what_is_read_of_it(cls: type[L.LightningDataModule]) -> None:
    assert issubclass(cls, DataModule)
    for name in ("mean", "std", "class_names", "official_train_size", "tokenizer"):
        assert name in dir(cls), name
    for method in ("check_data", "input_spec", "use_tokenizer"):
        assert callable(getattr(cls, method)), method


def test_the_defaults_of_a_text_corpus(tmp_path: Path) -> None:
    dm = TextDataModule(path=str(tmp_path / "not-yet-written"), data_dir=str(tmp_path))
    assert dm.check_data() is None  # checked when prepared: nothing is read up front
    assert dm.input_spec() is None  # a language model generates rather than predicts
    assert (dm.mean, dm.std, dm.class_names, dm.official_train_size) == (None, None, None, None)
    assert not any(tmp_path.iterdir())


def test_what_in_memory_data_declares() -> None:
    assert MNISTDataModule.official_train_size == 60_000 and MNISTDataModule.mean is None  # set per instance
    assert InMemoryDataModule.tokenizer is None and InMemoryDataModule.official_train_size is None
    InMemoryDataModule().use_tokenizer(ByteTokenizer())  # data without a tokenizer of its own ignores one


def test_a_model_reads_the_tokenizer_of_declared_text_data_only(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("ab 012 " * 200)
    text = TextDataModule(path=str(tmp_path / "c.txt"), tokenizer="byte", block_size=4, data_dir=str(tmp_path))
    model = GPT(**{**TINY_TEXT, "vocab_size": 256})
    model._trainer = SimpleNamespace(datamodule=text, ckpt_path=None)
    model.setup("fit")
    assert model.tokenizer == ByteTokenizer()
    # A datamodule of another kind that happens to have a `tokenizer` attribute is not text data.
    other = L.LightningDataModule()
    other.tokenizer = ByteTokenizer()
    plain = GPT(**{**TINY_TEXT, "vocab_size": 256})
    plain._trainer = SimpleNamespace(datamodule=other, ckpt_path=None)
    plain.setup("fit")
    assert plain.tokenizer is None


#: ``getattr(obj, "literal", ...)`` and ``hasattr`` calls that remain in these packages, each on an object of another
#: library (or a name computed at run time), never on a zerotune model, datamodule or callback.
ALLOWED_PROBES = {
    ("lightning_models/base.py", "_logger_connector"),  # Lightning's Trainer internals
    ("datamodules/table_prep.py", "toarray"),  # a scipy sparse matrix or a NumPy array
    ("datamodules/table_prep.py", "infrequent_categories_"),  # scikit-learn's encoder
    ("datamodules/text.py", "reason"),  # urllib's error
    ("datamodules/vision.py", "classes"),  # torchvision's datasets
    ("experiments/rundir/console.py", "__all__"),  # a package's exports, listed in an error message
    ("experiments/rundir/stops.py", "strerror"),  # an OSError or a subprocess error
    ("experiments/merge_lora.py", "strerror"),
    ("experiments/tuning/trials.py", "sched_getaffinity"),  # not on every platform's os module
    ("experiments/launcher/cli.py", "_typehint"),  # jsonargparse's argument actions
    ("experiments/launcher/lr_range.py", "experiment"),  # a logger of any kind, and its writer
    ("experiments/launcher/lr_range.py", "add_image"),
    ("experiments/launcher/summary.py", "items"),  # hyperparameters: a mapping or a plain value
    ("experiments/callbacks/throughput.py", "_logger_connector"),  # Lightning's Trainer internals
}


def probes() -> set[tuple[str, str]]:
    """``(file, attribute)`` of every ``getattr``/``hasattr`` call with a literal attribute name in the packages."""
    found = set()
    for package in ("lightning_models", "datamodules", "experiments"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2:
                    name = node.args[1]
                    if node.func.id in ("getattr", "hasattr") and isinstance(name, ast.Constant):
                        found.add((path.relative_to(ROOT).as_posix(), str(name.value)))
    return found


def test_no_probes_of_zerotunes_own_types() -> None:
    assert probes() - ALLOWED_PROBES == set()


def test_the_probe_scan_finds_a_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "lightning_models"
    fake.mkdir()
    (fake / "m.py").write_text("x = getattr(model, 'tokenizer', None)\ny = hasattr(dm, 'input_spec')\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert probes() == {("lightning_models/m.py", "tokenizer"), ("lightning_models/m.py", "input_spec")}


def test_a_plain_module_is_exported_with_a_batch_axis(tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "plain.onnx"
    export_onnx(nn.Linear(3, 2).eval(), torch.zeros(2, 3), path)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", ""]
