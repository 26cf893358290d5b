"""The guideline results drawn: one panel per experiment, ours beside the paper's GPU and ARM figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shufflenet.guidelines.experiments import EXPERIMENTS, TITLES


def plot_results(results: dict[str, Any]) -> Figure:
    """One panel per experiment: our throughput relative to the first row (bars, one per multiplier, with the
    interquartile range), the paper's GPU and ARM figures normalised the same way (markers)."""
    experiments = [e for e in EXPERIMENTS if results.get(e)]
    fig = Figure(figsize=(20, 9), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    settings = results.get("settings", {})
    machine = settings.get("machine", {})
    fig.suptitle(
        f"ShuffleNet V2 guidelines on {machine.get('cpu', '?')} ({settings.get('device', '?')}, "
        f"{machine.get('torch_threads', '?')} thread(s){'' if settings.get('mkldnn', True) else ', oneDNN off'}, "
        f"batch {settings.get('batch_size', '?')}): "
        "throughput relative to the first row; markers = paper (GPU ^, ARM s)"
    )
    for ax, experiment in zip(axes, experiments, strict=False):
        rows = results[experiment]
        if experiment == "v1_vs_v2":
            rows = [r for r in rows if "_v2_" in r["name"]]  # relative = v2 / v1 at the same width
            names = [f"x{r['multiplier']:g}" for r in rows]
            mults: list[float] = [0.0]
            key = {(0.0, f"x{r['multiplier']:g}"): r for r in rows}
        else:
            names = list(dict.fromkeys(r["name"] for r in rows))
            mults = list(dict.fromkeys(r["multiplier"] for r in rows))
            key = {(r["multiplier"], r["name"]): r for r in rows}
        width = 0.8 / len(mults)
        for j, m in enumerate(mults):
            xs, ys, lo, hi, gpu, arm = [], [], [], [], [], []
            for i, name in enumerate(names):
                row = key.get((m, name))
                if row is None:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                scale = row["relative"] / row["images_per_s"]
                xs.append(x)
                ys.append(row["relative"])
                lo.append(row["relative"] - row["images_per_s_q1"] * scale)
                hi.append(row["images_per_s_q3"] * scale - row["relative"])
                gpu.append((x, row["paper_gpu_relative"]))
                arm.append((x, row["paper_arm_relative"]))
            label = "this machine" if experiment == "v1_vs_v2" else f"this machine x{m:g}"
            bars = ax.bar(xs, ys, width * 0.9, yerr=[lo, hi], capsize=2, label=label, alpha=0.85)
            color = bars.patches[0].get_facecolor() if bars.patches else None
            for points, marker, who in ((gpu, "^", "GPU"), (arm, "s", "ARM")):
                points = [(x, y) for x, y in points if y is not None]
                if points:
                    ax.scatter(
                        *zip(*points, strict=True),
                        marker=marker,
                        color="black" if who == "GPU" else "white",
                        edgecolors=color if color is not None else "black",
                        linewidths=1.5,
                        zorder=3,
                        s=36,
                        label=f"paper {who}" if j == 0 else None,
                    )
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        labels = [name.removeprefix("shufflenet_") for name in names]
        ax.set_xticks(range(len(names)), labels, rotation=20 if experiment in ("G3", "v2_plus") else 0, fontsize=8)
        ylabel = "v2 / v1 throughput" if experiment == "v1_vs_v2" else "throughput / first row"
        ax.set_ylabel(ylabel)
        verdict = results.get("verdicts", {}).get(experiment, {}).get("verdict", "")
        ax.set_title(f"{experiment}: {TITLES[experiment]}\n({verdict})", fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[len(experiments) :]:
        ax.axis("off")
    if len(experiments) < len(axes):
        summary = [
            f"{name}: {v['verdict']}, headline holds {v['headline_holds']}x, "
            f"{v['holds']}/{len(v['claims'])} claims hold, {v['reversed']} reversed"
            for name, v in results.get("verdicts", {}).items()
        ]
        load = machine.get("loadavg")
        summary.append(f"load average at start: {load[0]:.2f}" if load else "")
        axes[-1].text(0.0, 0.95, "\n".join(summary), va="top", fontsize=9, family="monospace")
    return fig


def save_plot(results: dict[str, Any], path: str | Path, dpi: int = 80) -> Path:
    """Draw :func:`plot_results` and write it to ``path`` (format from the suffix, e.g. ``.png``)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write plot {path}: directory {path.parent} does not exist")
    fig = plot_results(results)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path
