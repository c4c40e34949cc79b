"""PNG plots of a ``python -m mlx_synapse.bench`` report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from .runners import TIERS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(report: dict, path: Path) -> Path:
    """Prompt and generation tokens/s of every runner, one row of panels per (weights, prompt length)."""
    plt = _plt()
    groups: dict = {}
    for row in report["summary"]:
        groups.setdefault((row["form"], row["prompt_tokens"], row.get("gen_tokens")), []).append(row)
    keys = sorted(groups)
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 0.45 * max(len(v) for v in groups.values()) * len(keys) + 1.6),
                             squeeze=False)
    for (form, plen, glen), ax_row in zip(keys, axes):
        rows = groups[(form, plen, glen)]
        names = [r["runner"] for r in rows]
        colors = ["tab:blue" if n in TIERS else "tab:gray" for n in names]
        for ax, key, title in zip(ax_row, ("prompt_tps", "gen_tps"), ("prompt tokens/s", "generation tokens/s")):
            vals = [r[key] or 0.0 for r in rows]
            bars = ax.barh(names, vals, color=colors)
            ax.invert_yaxis()
            ax.set_title(f"{form}, prompt {plen}, generate {glen}: {title}", fontsize=9)
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in vals], fontsize=7, padding=2)
            ax.margins(x=0.15)
            ax.tick_params(labelsize=8)
    fig.suptitle(f"{report['machine']} — ours (blue) vs peers (gray); commit {report['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_thermal(report: dict, path: Path) -> Path:
    """Generation tokens/s per window of the sustained run, with power where it was measured."""
    plt = _plt()
    th = report["thermal"]
    t = th["thermal"]
    mid = [(w["start_s"] + w["end_s"]) / 2 for w in t["windows"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    tps = [w["tps"] for w in t["windows"]]
    lines = ax.plot(mid, tps, "o-", color="tab:blue", label="generation tokens/s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("generation tokens/s")
    ax.set_ylim(0, 1.3 * max(tps))
    if all("watts" in w for w in t["windows"]):
        ax2 = ax.twinx()
        watts = [w["watts"] for w in t["windows"]]
        est = "" if (th.get("meter") or {}).get("measured") else " (estimate)"
        lines += ax2.plot(mid, watts, "s--", color="tab:red", label=f"watts{est}")
        ax2.set_ylabel(f"watts{est}")
        ax2.set_ylim(0, 1.3 * max(watts))
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower right", fontsize=8)
    v = t["verdict"]
    ax.set_title(f"{th['runner']} ({th['form']}): last vs first window {-v['drop_pct']:+.1f}% tokens/s, "
                 f"throttled: {v['throttled']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_report(report: dict, out: Path) -> list:
    out = Path(out)
    paths = []
    if report["summary"]:
        paths.append(plot_throughput(report, out / "throughput.png"))
    if report.get("thermal") and "thermal" in report["thermal"]:
        paths.append(plot_thermal(report, out / "thermal.png"))
    return paths
