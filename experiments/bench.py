"""``python -m experiments.bench``: the throughput and time-to-accuracy benchmark's command line (what it measures:
:mod:`experiments.benchmarks.synthetic`, whose description ``--help`` prints).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from experiments.benchmarks import synthetic
from experiments.benchmarks.synthetic import (
    BENCH_EXPERIMENTS,
    Case,
    _calibrate,
    _machine,
    _peak_rss_mb,
    onnx_inference,
    run_hand,
    run_lightning,
    run_tutorial,
    run_zerotune,
    synthetic_split,
    time_startup,
    time_to_accuracy,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench",
        description=synthetic.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", default=BENCH_EXPERIMENTS, help="experiment configs to benchmark")
    parser.add_argument("--seconds", type=float, default=4.0, help="target timed seconds per loop and model")
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="synthetic training samples per model (default: the size of the dataset's real training split, so "
        "epoch-end work such as checkpoints weighs as much as in a real run)",
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the tutorial loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="docs/benchmark.md", help="Markdown file for the results ('' to skip)")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["startup", "accuracy", "onnx", "gpt"], help="parts to leave out"
    )
    parser.add_argument(
        "--shakespeare",
        default="data/tinyshakespeare/input.txt",
        help="Tiny Shakespeare's input.txt for the GPT rows (the race against nanoGPT's CPU recipe needs it)",
    )
    parser.add_argument("--data_dir", help="real-data mode: MNIST in torchvision's layout (time to 99%% test accuracy)")
    parser.add_argument("--image_folder", help="real-data mode: CIFAR-10 JPEG class folders (time to 70%%, start-up)")
    args = parser.parse_args(argv)
    # Every run and file of the benchmark lives in one temporary folder, removed however the benchmark ends.
    with tempfile.TemporaryDirectory(prefix="zerotune-bench-") as work:
        return _bench(args, work)


def _bench(args: argparse.Namespace, work: str) -> int:
    """Run the benchmark parts ``args`` asks for, writing runs and files under ``work``; returns the exit code."""
    device = torch.device(args.device)
    if args.data_dir or args.image_folder:
        from experiments.benchmarks import real as bench_real

        return bench_real.run(args.data_dir, args.image_folder, args.device, args.workers, args.out, _machine(device))
    # The launcher's default (--flush_denormal true), set for the whole process so all three loops run alike.
    torch.set_flush_denormal(True)
    from experiments.rundir.console import quiet

    quiet()
    lines = [
        f"Measured on: {_machine(device)}, device `{device}`; denormals flushed to zero in all loops (the launcher's "
        "default). Peak RSS is the benchmark process's peak so far.",
        "",
        "| experiment | batch | steps | (a) tutorial samples/s | (b) hand loop samples/s | (L) bare Lightning "
        "samples/s | (c) zerotune samples/s | (c)/(a) | (c)/(b) | (c)/(L) | s per epoch (a / b / c) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name in args.models:
        case = Case.from_config(name)
        dm = case.datamodule()
        # By default the real training split's size: what the datamodule keeps of the official training set.
        official = dm.official_train_size
        n_train = args.samples or (len(dm.train_val_indices(official)[0]) if official else 4096)
        split = synthetic_split(dm, n_train)
        steps = _calibrate(case, split, device, args.seconds, work)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        secs = {
            "a": run_tutorial(case, split, steps, device, args.workers),
            "b": run_hand(case, split, steps, device, f"{work}/hand-{name}"),
            "L": run_lightning(case, split, steps, device),
            "c": run_zerotune(case, split, steps, device, f"{work}/runs"),
        }
        rate = {k: steps * dm.batch_size / v for k, v in secs.items()}
        epoch = " / ".join(f"{n_train / rate[k]:.1f}" for k in "abc")
        mem = (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else _peak_rss_mb()
        row = (
            f"| {name} | {dm.batch_size} | {steps} | {rate['a']:.0f} | {rate['b']:.0f} | {rate['L']:.0f} "
            f"| {rate['c']:.0f} | {rate['c'] / rate['a']:.2f}x | {rate['c'] / rate['b']:.2f}x "
            f"| {rate['c'] / rate['L']:.2f}x | {epoch} | {mem:.0f} |"
        )
        lines.append(row)
        print(row, flush=True)
    if "startup" not in args.skip:
        lines += ["", f"Startup, `python -m experiments.run` to the first training step: {time_startup(work):.1f} s."]
        print(lines[-1], flush=True)
    if "accuracy" not in args.skip:
        t = time_to_accuracy(work)
        lines += [
            "",
            f"Default experiment (digits_cnn): val/acc >= 0.97 after {t.get('REACHED', float('nan')):.1f} s "
            f"of training; fit {t['FIT']:.1f} s; whole command {t['wall']:.1f} s; "
            f"test accuracy {t.get('test_acc', float('nan')):.4f}.",
        ]
        print(lines[-1], flush=True)
    if "onnx" not in args.skip:
        lines += [
            "",
            "| model | batch | PyTorch eager samples/s | ONNX Runtime samples/s | ORT / eager |",
            "|---|---|---|---|---|",
        ]
        print("\n".join(lines[-3:]), flush=True)
        for name in args.models:
            for batch, (eager, ort_rate) in onnx_inference(Case.from_config(name), work, args.seconds).items():
                lines.append(f"| {name} | {batch} | {eager:.0f} | {ort_rate:.0f} | {ort_rate / eager:.2f}x |")
                print(lines[-1], flush=True)
    if "gpt" not in args.skip:
        # Language models: tokens/s against a nanoGPT-style loop, and the race to 1.88 (experiments/bench_gpt.py).
        from experiments.benchmarks import gpt as bench_gpt

        lines += bench_gpt.section(args.seconds, work, args.shakespeare, skip=[])
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        text = "# Benchmark\n\nGenerated by `python -m experiments.bench` (`make bench`).\n\n" + "\n".join(lines) + "\n"
        from experiments.benchmarks.real import keep_section

        out.write_text(keep_section(out, text))
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
