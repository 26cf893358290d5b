"""``shufflenet models``: every registered model with params, MFLOPs and MAC beside the paper's figure, and
which published ImageNet weights it has (``--weights torchvision|mmpretrain``) with their top-1.

``--features`` lists the backbone's feature levels instead: channels and stride of each ``out_indices`` entry.
"""

from __future__ import annotations

import argparse

from shufflenet.analysis import model_table
from shufflenet.backbone import feature_table
from shufflenet.checkpoints import weights_of
from shufflenet.cli.common import format_table, write_json
from shufflenet.models import list_models

COLUMNS = [
    ("name", "model"),
    ("params", "params"),
    ("mflops", "MFLOPs"),
    ("mac_m", "MAC (M)"),
    ("paper_mflops", "paper MFLOPs"),
    ("paper_source", "source"),
    ("mflops_vs_paper_pct", "diff %"),
    ("weights", "weights: top-1 %"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser("models", help="list models with params, FLOPs and MAC")
    parser.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'shufflenet_v1_g3_*'")
    parser.add_argument(
        "--img-size", type=int, default=224, help="input size for FLOPs/MAC, or the --features map sizes (default 224)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the table as JSON ('-' for stdout)")
    parser.add_argument(
        "--features", action="store_true", help="feature levels (out_indices) with channels and strides instead"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the model table."""
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; try `shufflenet models` for all names")
    if args.features:
        return _print_features(names, args.json, args.img_size)
    rows = model_table(names, (args.img_size, args.img_size))
    for row in rows:
        published = weights_of(row["name"])
        row["pretrained"] = [{"source": w.source, "top1": w.top1, "top5": w.top5, "url": w.url} for w in published]
        row["weights"] = ", ".join(f"{w.source} {w.top1:g}" for w in published) or None
    if args.json:
        write_json(args.json, rows)
        if args.json == "-":
            return 0
    print(format_table(rows, COLUMNS))
    size = f"{args.img_size}x{args.img_size}"
    print(f"\nFLOPs = multiply-adds; MAC = elements read + written (v2 paper, Sec. 2), at {size}.")
    print("weights: published ImageNet-1k top-1 of --weights torchvision|mmpretrain (first: pretrained=True).")
    return 0


def _print_features(names: list[str], json_path: str | None, img_size: int) -> int:
    rows = feature_table(names, img_size)
    if json_path:
        write_json(json_path, rows)
        if json_path == "-":
            return 0
    # v1/v2 name their levels maxpool, stage2-4, conv5 and V2+ stage1-4, conv5: one table per naming (and per
    # map sizes, which the header shows).
    by_levels: dict[tuple, list[dict]] = {}
    for row in rows:
        by_levels.setdefault(tuple((lvl["module"], _size(lvl)) for lvl in row["levels"][:4]), []).append(row)
    tables = []
    for group in by_levels.values():
        num_levels = max(len(row["levels"]) for row in group)
        first = max(group, key=lambda row: len(row["levels"]))["levels"]
        columns = [("name", "model")] + [
            (str(i), f"{i}: {first[i]['module']} /{first[i]['reduction']} {_size(first[i])}") for i in range(num_levels)
        ]
        table = [{"name": row["name"], **{str(lvl["index"]): lvl["num_chs"] for lvl in row["levels"]}} for row in group]
        tables.append(format_table(table, columns))
    print("\n\n".join(tables))
    print(
        f"\nChannels per out_indices entry (header: index: module /stride, map size for a {img_size}x{img_size} "
        "input); default out_indices (0, 1, 2, 3)."
    )
    return 0


def _size(level: dict) -> str:
    return "x".join(str(side) for side in level["size"])
