"""Language-model runs through the launcher: every default feature on (ONNX, text samples, tokens/s and MFU,
bits per byte), exact validation loss, generation from the run folder, an exact resume, DDP on CPU processes,
precisions and presets, and one clear ``error:`` line for each mistake a user can make."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import ROOT, run_launcher
from fakedata import write_code_corpus
from pretrained_fixtures import flags
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules import TextDataModule
from datamodules.text import FixedBlocks
from experiments import generate
from experiments.api import launch, resume
from experiments.launcher.recipes import CONFIG_DIR
from experiments.rundir.stops import TrainingStopped
from lightning_models import GPT
from lightning_models.checkpoints import model_from_checkpoint

#: A 2-layer, 32-wide GPT on a small code corpus with a 300-token BPE: 12 steps, validation every 6.
TINY_LM: dict[str, Any] = {
    "data.bpe_vocab_size": 300,
    "data.block_size": 32,
    "data.batch_size": 8,
    "data.eval_batch_size": 16,
    "data.val_blocks": None,
    "model.n_layer": 2,
    "model.n_head": 2,
    "model.n_embd": 32,
    "model.warmup_steps": 2,
    "trainer.max_steps": 12,
    "trainer.val_check_interval": 6,
    "trainer.log_every_n_steps": 2,
    "samples.max_new_tokens": 24,
    "progress_bar.refresh_rate": 0,
}


def lm_settings(corpus: Path, runs: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """:data:`TINY_LM` on ``corpus``, its tokens cached beside ``runs``, with ``extra`` settings on top."""
    return {"data.path": str(corpus), "data.data_dir": str(runs.parent / "data"), **TINY_LM, **(extra or {})}


def lm_args(corpus: Path, runs: Path, *extra: str) -> list[str]:
    """The command line of :func:`lm_settings`, for tests of the command line itself."""
    return ["stdlib_gpt", "--runs_dir", str(runs), *flags(lm_settings(corpus, runs)), *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_code_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def lm_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run with every default on: ONNX export, text samples, throughput, dashboards, test after fit."""
    runs = tmp_path_factory.mktemp("lm") / "runs"
    run = launch("stdlib_gpt", lm_settings(corpus, runs), runs_dir=runs).run_dir
    assert run == runs / "stdlib_gpt" / "version_0"
    return run


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_run_logs_loss_perplexity_bits_per_byte_throughput_and_samples(lm_run: Path) -> None:
    run = lm_run
    acc = events(run)
    scalars = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/ppl", "train/bpb", "val/loss", "val/ppl", "val/bpb", "test/loss", "test/ppl"}
    expected |= {"test/bpb", "perf/tokens_per_s", "perf/mfu", "lr-AdamW/decay", "onnx/max_abs_diff"}
    assert expected <= scalars, expected - scalars
    assert [e.step for e in acc.Scalars("val/loss")] == [5, 11]  # Lightning logs a validation at the last step
    for e in acc.Scalars("val/loss"):
        ppl = next(p.value for p in acc.Scalars("val/ppl") if p.step == e.step)
        assert ppl == pytest.approx(math.exp(e.value), rel=1e-4)
    assert all(t.value > 0 for t in acc.Scalars("perf/tokens_per_s"))
    assert all(0 < m.value < 1 for m in acc.Scalars("perf/mfu"))
    # A generated sample per validation in the Text tab (at the global step: after 6 and 12 optimizer steps); no
    # confusion matrix of a 300-token "classifier".
    samples = acc.Tensors("samples/text/text_summary")
    assert [s.step for s in samples] == [6, 12]
    assert samples[-1].tensor_proto.string_val[0].decode().startswith("    def ")
    assert not acc.Tags()["images"]


def test_validation_loss_and_bits_per_byte_are_exact_over_the_split(lm_run: Path) -> None:
    run = lm_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    dm = TextDataModule(**config["data"]["init_args"])
    dm.setup()
    model, _ = model_from_checkpoint(run / "checkpoints" / "last.ckpt")
    nll, tokens, n_bytes = 0.0, 0, 0
    table = torch.tensor(dm.tokenizer.token_bytes())
    with torch.no_grad():
        for x, y in FixedBlocks(torch.from_numpy(dm.tokens["val"].astype("int32")), dm.block_size, 7):
            nll += float(model.compute_loss(model(x), y)) * y.numel()
            tokens += y.numel()
            n_bytes += int(table[y].sum())
    acc = events(run)
    assert acc.Scalars("val/loss")[-1].value == pytest.approx(nll / tokens, rel=1e-5)
    assert acc.Scalars("val/bpb")[-1].value == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-5)


def test_summary_onnx_and_tokenizer_files(lm_run: Path) -> None:
    run = lm_run
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and {"test/loss", "test/ppl", "test/bpb"} <= set(status["test_metrics"])
    assert (run / "model.onnx").is_file()
    import onnx

    dims = onnx.load(str(run / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    assert events(run).Scalars("onnx/max_abs_diff")[-1].value < 1e-4
    from experiments.view import resolve_model

    assert resolve_model(run) == run / "model.onnx"  # what `python -m experiments.view RUN` serves in Netron
    # The tokenizer as plain data: in the run folder and inside a checkpoint that loads with weights_only=True.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    saved = json.loads((run / "tokenizer.json").read_text())
    assert ckpt["tokenizer"] == saved and saved["kind"] == "bpe"
    model, _ = model_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert isinstance(model, GPT) and model.tokenizer.to_dict() == saved


def test_generate_streams_text_with_and_without_the_cache_alike(
    lm_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = lm_run
    outputs = []
    for extra in ([], ["--no_cache"]):
        args = [str(run), "--prompt", "def ", "--max_new_tokens", "40", "--seed", "3", "--top_p", "0.95", *extra]
        assert generate.main(args) == 0
        out, err = capsys.readouterr()
        outputs.append(out)
        assert f"from {run / 'checkpoints'}" in err
    assert outputs[0] == outputs[1] and outputs[0].startswith("def ") and len(outputs[0]) > 40
    # Streaming: text arrives in pieces as the tokens come, and the pieces make up the whole.
    model = generate.load_language_model(run).model
    pieces: list[str] = []
    text = model.generate_text("class ", 30, seed=3, on_text=pieces.append)
    assert len([p for p in pieces if p]) > 5 and "".join(pieces) == text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prompt", "x" * 200], "the prompt is"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top_p", "2"], "top_p must be in (0, 1]"),
    ],
    ids=["prompt longer than block_size", "negative temperature", "top_p above 1"],
)
def test_generate_usage_errors_are_one_line(
    lm_run: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = lm_run
    code = generate.main([str(run), *argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_generate_without_a_tokenizer_is_one_line(
    lm_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = lm_run
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del ckpt["tokenizer"]
    torch.save(ckpt, bare / "checkpoints" / "last.ckpt")
    code = generate.main([str(bare)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: no tokenizer for {bare / 'checkpoints' / 'last.ckpt'}") and "tokenizer.json" in err
    # The run folder's tokenizer.json is enough.
    shutil.copy(run / "tokenizer.json", bare / "tokenizer.json")
    assert generate.main([str(bare), "--max_new_tokens", "5"]) == 0


def test_generate_names_a_missing_run_and_a_model_that_cannot_generate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate.main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nope'} does not exist")
    assert generate.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: no checkpoint in {tmp_path}")
    runs = tmp_path / "runs"
    fast = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "onnx.enabled": False}
    launch("digits_mlp", fast, runs_dir=runs)
    capsys.readouterr()
    assert generate.main([str(runs / "digits_mlp")]) == 2
    assert "holds a MLPClassifier, which does not generate text" in capsys.readouterr().err


def test_resume_after_ctrl_c_continues_exactly(corpus: Path, tmp_path: Path) -> None:
    from tests.run_helpers import SigintAtStep

    quiet = {
        "trainer.deterministic": True,
        "onnx.enabled": False,
        "samples.enabled": False,
        "test_after_fit": False,
        "model.dropout": 0.1,
    }
    reference = tmp_path / "reference"
    launch("stdlib_gpt", lm_settings(corpus, reference, quiet), runs_dir=reference)
    runs = tmp_path / "runs"
    # Ctrl+C after step 3: callbacks given from Python run after the run's own, so it stops after step 4.
    with pytest.raises(TrainingStopped) as stopped:
        launch("stdlib_gpt", lm_settings(corpus, runs, quiet), runs_dir=runs, callbacks=[SigintAtStep(3)])
    assert stopped.value.outcome.state == "interrupted" and stopped.value.outcome.exit_code == 130
    run = runs / "stdlib_gpt" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert resume(run).run_dir == run
    want = torch.load(reference / "stdlib_gpt" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == want["global_step"] == 12
    for key, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    assert got["tokenizer"] == want["tokenizer"]


BAD_RUNS = [
    (
        "empty",
        ["--model.n_embd", "30", "--model.n_head", "4"],
        "model.n_embd (30) must be divisible by model.n_head (4)",
    ),
    ("empty", [], "holds no text"),
    ("short", [], "has 5 tokens, fewer than one block of block_size + 1 = 33"),
    ("missing", [], "text corpus not found"),
]


@pytest.mark.parametrize(("corpus_kind", "extra", "message"), BAD_RUNS, ids=["n_embd", "empty", "short", "missing"])
def test_bad_language_model_runs_are_one_line(
    corpus_kind: str, extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "corpus.txt"
    if corpus_kind == "empty":
        path.write_text("")
    elif corpus_kind == "short":
        path.write_text("def f(x):\n    return x\n" * 2)
    runs = tmp_path / "runs"
    code, _, err = run_launcher(lm_args(path, runs, "--data.tokenizer", "byte", *extra), capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bfloat16_trains_on_the_cpu(precision: str, corpus: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    quick = {"trainer.max_steps": 4, "trainer.val_check_interval": 4, "onnx.enabled": False}
    result = launch("stdlib_gpt", lm_settings(corpus, runs, {**quick, "trainer.precision": precision}), runs_dir=runs)
    ckpt = torch.load(runs / "stdlib_gpt/version_0/checkpoints/last.ckpt", weights_only=True)
    weights = ckpt["state_dict"]["transformer.h.0.attn.qkv.weight"]
    assert weights.dtype == (torch.bfloat16 if precision == "bf16-true" else torch.float32)
    assert torch.isfinite(weights.float()).all() and math.isfinite(result.test_metrics["test/loss"])


def test_ddp_on_two_cpu_processes_reports_the_whole_validation_split(corpus: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    marks = tmp_path / "ranks"
    args = lm_args(corpus, runs, "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices",
                   "2", "--onnx.enabled", "false", "--trainer.callbacks+=tests.run_helpers.RankMarker",
                   f"--trainer.callbacks.out_dir={marks}")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((marks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["train_samples"] == ranks[1]["train_samples"] == 12 * 8
    run = runs / "stdlib_gpt" / "version_0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    dm = TextDataModule(**config["data"]["init_args"])
    dm.setup()
    model, _ = model_from_checkpoint(run / "checkpoints" / "last.ckpt")
    blocks = FixedBlocks(torch.from_numpy(dm.tokens["val"].astype("int32")), dm.block_size, 64)
    assert ranks[0]["val_samples"] + ranks[1]["val_samples"] == len(blocks.starts)  # disjoint shards, no padding
    with torch.no_grad():
        losses = [(float(model.compute_loss(model(x), y)), y.numel()) for x, y in blocks]
    exact = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert events(run).Scalars("val/loss")[-1].value == pytest.approx(exact, rel=1e-5)


def test_fsdp_preset_wraps_and_checkpoints_the_transformer_block() -> None:
    import lightning as L
    from lightning.pytorch.cli import LightningArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_models.transformer import Block

    parser = LightningArgumentParser()
    parser.add_lightning_class_args(L.Trainer, "trainer")
    preset = yaml.safe_load((CONFIG_DIR / "presets" / "fsdp.yaml").read_text())
    cfg = parser.parse_object({"trainer": preset["trainer"]})
    strategy = parser.instantiate_classes(cfg).trainer["strategy"]
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.strategy.init_args.state_dict_type == "full"


@pytest.mark.gpu
def test_fsdp_trains_the_gpt_on_gpus(corpus: Path, tmp_path: Path) -> None:
    devices = torch.cuda.device_count()
    runs = tmp_path / "runs"
    args = lm_args(corpus, runs, "--config", str(CONFIG_DIR / "presets" / "fsdp.yaml"), "--trainer.devices",
                   str(devices))  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = runs / "stdlib_gpt" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "transformer.h.0.attn.qkv.weight" in ckpt["state_dict"]  # a full state dict, loadable anywhere
    assert generate.main([str(run), "--max_new_tokens", "10"]) == 0


@pytest.mark.slow
def test_compiled_training_keeps_keys_and_generation_runs_eagerly(corpus: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    quick = {"model.compile": True, "trainer.max_steps": 4, "trainer.val_check_interval": 4, "onnx.enabled": False}
    run = launch("stdlib_gpt", lm_settings(corpus, runs, quick), runs_dir=runs).run_dir
    assert run == runs / "stdlib_gpt" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in state)
    samples = events(run).Tensors("samples/text/text_summary")  # generated by the compiled model, eagerly
    assert samples and samples[-1].tensor_proto.string_val[0].decode().startswith("    def ")


def test_fine_tuning_uses_the_pretrained_models_tokenizer(
    lm_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = lm_run / "checkpoints" / "last.ckpt"
    other = tmp_path / "other"  # other text, so a BPE trained on it merges other pairs
    other.mkdir()
    for i in range(6):
        (other / f"notes_{i}.txt").write_text(f"Chapter {i}. The quick brown fox jumps over the lazy dog.\n" * 30)
    runs = tmp_path / "runs"
    quick = {"trainer.max_steps": 2, "trainer.val_check_interval": 2, "onnx.enabled": False}
    code, _, err = run_launcher([*lm_args(other, runs), *flags({"model.pretrained": str(ckpt), **quick})], capsys)
    assert code == 2 and err.strip().startswith("error: model.pretrained") and "--data.tokenizer_path" in err
    assert list((runs / "stdlib_gpt").iterdir()) == []  # the mistake left no run folder
    settings = lm_settings(other, runs, {**quick, "model.pretrained": str(ckpt), "data.tokenizer_path": str(ckpt)})
    pretrained = launch("stdlib_gpt", settings, runs_dir=runs).report.pretrained
    assert pretrained is not None and pretrained.path == str(ckpt) and pretrained.loaded
    tuned = torch.load(runs / "stdlib_gpt" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["tokenizer"] == torch.load(ckpt, weights_only=True)["tokenizer"]


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_gpu_precisions_report_tokens_per_second_mfu_and_memory(precision: str, corpus: Path, tmp_path: Path) -> None:
    torch.cuda.reset_peak_memory_stats()
    size = {
        "model.n_layer": 6,
        "model.n_head": 6,
        "model.n_embd": 384,
        "data.block_size": 256,
        "data.batch_size": 32,
        "trainer.max_steps": 60,
        "trainer.val_check_interval": 60,
        "trainer.accelerator": "gpu",
        "trainer.precision": precision,
    }
    runs = tmp_path / "runs"
    acc = events(launch("stdlib_gpt", lm_settings(corpus, runs, size), runs_dir=runs).run_dir)
    rate, mfu = acc.Scalars("perf/tokens_per_s")[-1].value, acc.Scalars("perf/mfu")[-1].value
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"{precision}: {rate:.0f} tokens/s, MFU {mfu:.3f}, peak memory {peak:.0f} MiB")
    assert rate > 0 and 0 < mfu < 1
