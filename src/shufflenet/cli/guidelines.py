"""``shufflenet guidelines``: the ShuffleNet V2 paper's four guideline experiments, timed on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shufflenet.cli.common import format_table, write_json
from shufflenet.guidelines import (
    DEFAULT_BATCH_SIZE,
    EXPERIMENTS,
    PROFILES,
    TITLES,
    GuidelineConfig,
    run_guidelines,
    save_plot,
)

MICRO_COLUMNS = [
    ("name", "row"),
    ("widths", "widths"),
    ("mflops", "MFLOPs"),
    ("mmac", "MAC (M)"),
    ("mac_vs_bound", "MAC/bound"),
    ("images_per_s", "img/s"),
    ("spread_pct", "IQR %"),
    ("images_per_s_best", "best"),
    ("relative", "rel"),
    ("paper_gpu", "paper GPU"),
    ("paper_gpu_relative", "GPU rel"),
    ("paper_arm", "paper ARM"),
    ("paper_arm_relative", "ARM rel"),
]
MODEL_COLUMNS = [
    ("name", "model"),
    ("mflops", "MFLOPs"),
    ("paper_mflops", "paper MFLOPs"),
    ("mmac", "MAC (M)"),
    ("images_per_s", "img/s"),
    ("spread_pct", "IQR %"),
    ("images_per_s_best", "best"),
    ("relative", "vs v1"),
    ("paper_gpu", "paper GPU"),
    ("paper_gpu_relative", "GPU vs v1"),
    ("paper_arm", "paper ARM"),
    ("paper_arm_relative", "ARM vs v1"),
]

PLUS_COLUMNS = [
    ("name", "model"),
    ("mflops", "MFLOPs"),
    ("paper_mflops", "megvii/paper MFLOPs"),
    ("mmac", "MAC (M)"),
    ("images_per_s", "img/s"),
    ("spread_pct", "IQR %"),
    ("images_per_s_best", "best"),
    ("relative", "vs v2 1x"),
    ("gflops_per_s", "GFLOP/s"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "guidelines",
        help="time the ShuffleNet V2 paper's guideline experiments (G1-G4, v1 vs v2) on this machine",
        description="Rebuild Tables 1-4 of Ma et al. 2018 (56x56 input, blocks stacked 10 times, FLOPs fixed per "
        "experiment, channel multipliers x1/x2/x4) and v1 vs v2 at each width; time them and print each table "
        "beside the paper's GPU and ARM figures, all normalised to the first row.",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="x1 and width 1.0 only, 3 short repeats (~1 min)")
    parser.add_argument("--json", metavar="FILE", help="write all rows, settings and verdicts as JSON ('-': stdout)")
    parser.add_argument("--plot", metavar="FILE.png", help="write one panel per experiment to this PNG")
    parser.add_argument(
        "--widths",
        choices=PROFILES,
        help="which of the paper's channel widths to use (default: gpu on cuda, the smaller arm widths on cpu)",
    )
    parser.add_argument(
        "--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS), help="run only these"
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"images per call (default {DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per row (default 7, --quick 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, usually the core count)")
    parser.add_argument(
        "--no-mkldnn",
        dest="mkldnn",
        action="store_false",
        help="switch PyTorch's oneDNN (mkldnn) CPU convolution kernels off; convs then run as plain GEMMs",
    )
    # Knobs for tests and experiments, deliberately off the help page: they change the paper's setting.
    parser.add_argument("--input-size", type=int, default=56, help=argparse.SUPPRESS)
    parser.add_argument("--model-input-size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--min-time", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace) -> GuidelineConfig:
    overrides: dict[str, Any] = {
        "device": args.device,
        "profile": args.widths,
        "experiments": tuple(args.experiments),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "mkldnn": args.mkldnn,
        "input_size": args.input_size,
        "model_input_size": args.model_input_size,
    }
    for key in ("repeats", "min_time", "warmup"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return GuidelineConfig.quick(**overrides) if args.quick else GuidelineConfig(**overrides)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load(loadavg: list[float] | None) -> str:
    return f"{loadavg[0]:.2f}" if loadavg else "unknown"


def format_report(results: dict[str, Any]) -> str:
    """The tables (ours beside the paper's) and the verdicts as text."""
    settings = results["settings"]
    machine = settings["machine"]
    lines = [
        f"Machine: {machine['cpu']} ({machine['logical_cpus']} logical CPUs), torch {machine['torch']} with "
        f"{machine['torch_threads']} thread(s){', GPU ' + machine['gpu'] if machine.get('gpu') else ''}; "
        f"device {settings['device']}{'' if settings['mkldnn'] else ' (oneDNN off)'}, "
        f"batch {settings['batch_size']}, {settings['repeats']} repeats of "
        f">= {settings['min_time']} s, paper widths: {settings['profile']}; load average "
        f"{_load(machine['loadavg'])} before, {_load(settings['loadavg_after'])} after; {settings['seconds']} s.",
        "img/s = median images per second, IQR % = interquartile range / median, best = fastest repeat; "
        "rel = throughput / first row (v1_vs_v2: v2 / v1 at the same width; v2_plus: / v2 1.0x). "
        "Paper: GPU batches/s (GTX 1080Ti), ARM images/s (Snapdragon 810).",
    ]
    for experiment in EXPERIMENTS:
        rows = results.get(experiment)
        if not rows:
            continue
        columns = {"v1_vs_v2": MODEL_COLUMNS, "v2_plus": PLUS_COLUMNS}.get(experiment, MICRO_COLUMNS)
        lines.append(f"\n== {experiment}: {TITLES[experiment]}")
        for multiplier in dict.fromkeys(r["multiplier"] for r in rows):
            group = [r for r in rows if r["multiplier"] == multiplier]
            if experiment not in ("v1_vs_v2", "v2_plus"):
                lines.append(f"-- x{multiplier:g}")
            lines.append(format_table(group, columns))
        lines.append(results["verdicts"][experiment]["text"])
    lines.append("\nVerdicts:")
    for experiment, verdict in results["verdicts"].items():
        lines.append(
            f"  {experiment:<9} {verdict['verdict']:<14} headline '{verdict['headline']}' holds "
            f"{verdict['headline_holds']}/{verdict['headline_total']}; pairwise claims {verdict['holds']} hold, "
            f"{verdict['ties']} tie, {verdict['reversed']} reversed"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the experiments, print the tables and verdicts, write JSON / plot when asked."""
    config = _config(args)
    # Their folders are made now, as every command's --json makes its folder, so that a path that cannot be
    # written stops the run before minutes of timing rather than after.
    for option, value in (("--json", args.json), ("--plot", args.plot)):
        if value and value != "-":
            folder = Path(value).resolve().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise NotADirectoryError(
                    f"{option} {value}: cannot make the folder {folder}, a file is in the way; give another path"
                ) from None
    results = run_guidelines(config, progress=_progress)
    if args.json:
        write_json(args.json, results)
        if args.json != "-":
            print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        path = save_plot(results, args.plot)
        print(f"wrote {path}", file=sys.stderr)
    if args.json != "-":
        print(format_report(results))
    return 0
