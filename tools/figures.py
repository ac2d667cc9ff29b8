"""The report's figures (matplotlib), each a Figure whose artists hold the plotted numbers, saved as PNG by
tools.report: base-to-new Base vs New with iso-H curves and H per dataset with the seeds' spread,
few-shot accuracy vs shots (CoOp's figure), and the cross-dataset / domain generalisation targets.

Sized for a paper page (7 inches wide, 8-9 pt text) and labelled with their values, so a reader needs no
table to read them."""
import io

import numpy as np

ISO_H_LEVELS = (20, 30, 40, 50, 60, 70, 80, 90)
WHITE_BOX = {"facecolor": "white", "edgecolor": "none", "pad": 0.3}   # text readable over the curves
PAGE_WIDTH = 7.0   # inches: a two-column paper's full width
FONT = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
        "xtick.labelsize": 7, "ytick.labelsize": 7}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(FONT)
    return plt


def png(fig):
    """PNG bytes of a figure, which is then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()


def grid(count, columns, row_height=2.1):
    """A figure of ``count`` small panels, ``columns`` a row; the unused panels are hidden."""
    plt = pyplot()
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(PAGE_WIDTH, row_height * rows + 0.6), squeeze=False)
    axes = list(axes.flat)
    for axis in axes[count:]:
        axis.set_visible(False)
    return fig, axes[:count]


def method_colours(methods):
    plt = pyplot()
    palette = plt.get_cmap("tab10").colors
    return {method: palette[index % len(palette)] for index, method in enumerate(methods)}


def legend_below(fig, methods, colours, marker="o"):
    """One legend for all panels, under them: laid out after the panels, in the room kept for it."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[m], marker=marker, linestyle="", label=m) for m in methods]
    rows = -(-len(methods) // 3)
    room = (0.18 * rows + 0.1) / fig.get_figheight()
    fig.tight_layout(rect=(0, room, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(methods), 3), frameon=False,
               bbox_to_anchor=(0.5, 0))


def label_panel(axis, title, xlabel, ylabel):
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(True, linewidth=0.3)


def iso_h(axis, low, high):
    """Dashed curves of equal H = 2BN/(B+N) (N = HB / (2B - H)), labelled at their right end."""
    base = np.linspace(low, high, 200)
    for level in ISO_H_LEVELS:
        with np.errstate(divide="ignore", invalid="ignore"):
            new = level * base / (2 * base - level)
        shown = (base > level / 2) & (new >= low) & (new <= high)
        if shown.sum() < 2:
            continue
        axis.plot(base[shown], new[shown], linestyle="--", linewidth=0.5, color="0.7", zorder=0,
                  label=f"_iso-H {level}", gid=f"iso-H {level}")
        end = int(shown.sum() * 0.2)   # labelled near its upper-left end, away from the methods (upper right)
        axis.text(base[shown][end], new[shown][end], f"H={level}", fontsize=5.5, color="0.55", ha="left",
                  va="bottom", rotation=-35, rotation_mode="anchor")


def measured(rows):
    return [row for row in rows if row["source"] == "measured"]


def base_vs_new(rows):
    """Per dataset and for the average: each measured method at (Base, New) over iso-H curves (up and to
    the right is better on both), its H written in its colour in the panel's lower left corner (labels
    beside the points would overlap where methods are close)."""
    rows = measured(rows)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = method_colours(methods)
    fig, axes = grid(len(datasets), 4, row_height=1.85)
    for axis, dataset in zip(axes, datasets):
        points = [row for row in rows if row["dataset"] == dataset]
        values = [v for row in points for v in (row["base"], row["new"])]
        low, high = max(0.0, min(values) - 5), min(100.0, max(values) + 5)
        iso_h(axis, low, high)
        for index, row in enumerate(points):
            axis.scatter([row["base"]], [row["new"]], s=18, color=colours[row["method"]], label=row["method"],
                         zorder=3)
            axis.text(0.03, 0.03 + 0.08 * (len(points) - 1 - index), f"{row['hm']:.1f}", transform=axis.transAxes,
                      fontsize=6, color=colours[row["method"]], ha="left", va="bottom", zorder=4, bbox=WHITE_BOX)
        axis.text(0.03, 0.03 + 0.08 * len(points), "H", transform=axis.transAxes, fontsize=6, ha="left",
                  va="bottom", fontweight="bold", zorder=4, bbox=WHITE_BOX)
        axis.set_xlim(low, high)
        axis.set_ylim(low, high)
        axis.set_aspect("equal", adjustable="box")
        label_panel(axis, dataset, "Base", "New")
    legend_below(fig, methods, colours)
    return fig


def harmonic_bars(rows):
    """H per dataset (and the average) of each measured method: a dot with the seeds' spread (std of the
    per-seed H) as its error bar and the value above it; dots, not bars, so the axis can start near the
    values and a spread of a point stays visible."""
    rows = measured(rows)
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = method_colours(methods)
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(PAGE_WIDTH, 2.8))
    lookup = {(row["dataset"], row["method"]): row for row in rows}
    width = 0.8 / max(len(methods), 1)
    for index, method in enumerate(methods):
        found = [(position, lookup[(dataset, method)]) for position, dataset in enumerate(datasets)
                 if (dataset, method) in lookup]
        xs = [position + (index + 0.5) * width - 0.4 for position, _ in found]
        ys = [row["hm"] for _, row in found]
        spread = [row.get("hm_std") or 0.0 for _, row in found]
        axis.errorbar(xs, ys, yerr=spread, fmt="o", markersize=3, capsize=1.5, elinewidth=0.7,
                      color=colours[method], label=method)
        for x, y, e in zip(xs, ys, spread):
            axis.annotate(f"{y:.1f}", (x, y + e), textcoords="offset points", xytext=(0, 2), fontsize=5,
                          rotation=90, ha="center", va="bottom", color=colours[method])
    for boundary in range(1, len(datasets)):
        axis.axvline(boundary - 0.5, color="0.85", linewidth=0.5)
    axis.set_xticks(range(len(datasets)))
    axis.set_xticklabels(datasets, rotation=30, ha="right")
    axis.set_xlim(-0.5, len(datasets) - 0.5)
    axis.set_ylabel("H (error bar: std over seeds)")
    low = min(row["hm"] - (row.get("hm_std") or 0) for row in rows)
    high = max(row["hm"] + (row.get("hm_std") or 0) for row in rows)
    axis.set_ylim(max(0, low - 3), min(100, high + 0.12 * (high - low + 10)))
    axis.grid(True, axis="y", linewidth=0.3)
    axis.legend(ncol=min(len(methods), 5), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def accuracy_vs_shots(curves):
    """Few-shot: ``curves`` {panel (dataset or Average): {method: [(shots, mean, std), ...]}}; one line per
    method, shots on a log-2 axis, error bars the seeds' spread, the last point's value written."""
    panels = list(curves)
    methods = list(dict.fromkeys(method for panel in curves.values() for method in panel))
    colours = method_colours(methods)
    fig, axes = grid(len(panels), 4)
    for axis, panel in zip(axes, panels):
        for method, points in curves[panel].items():
            shots, means, stds = zip(*sorted(points))
            axis.errorbar(shots, means, yerr=stds, marker="o", markersize=3, linewidth=1, capsize=1.5,
                          color=colours[method], label=method)
            axis.annotate(f"{means[-1]:.1f}", (shots[-1], means[-1]), textcoords="offset points", xytext=(3, 0),
                          fontsize=6, color=colours[method], va="center")
        all_shots = sorted({s for points in curves[panel].values() for s, _, _ in points})
        axis.set_xscale("log", base=2)
        axis.margins(x=0.2)   # room for the last value
        axis.set_xticks(all_shots)
        axis.set_xticklabels([str(s) for s in all_shots])
        label_panel(axis, panel, "shots per class", "accuracy (%)")
    legend_below(fig, methods, colours)
    return fig


def transfer(panels):
    """Cross-dataset and domain generalisation: ``panels`` {title: (target labels, {method: [mean or
    None per target]})}; one row of dots per method over the targets, the values written."""
    methods = list(dict.fromkeys(method for _, table in panels.values() for method in table))
    colours = method_colours(methods)
    plt = pyplot()
    widths = [max(len(labels), 2) for labels, _ in panels.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(PAGE_WIDTH, 2.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for axis, (title, (labels, table)) in zip(axes.flat, panels.items()):
        offsets = np.linspace(-0.2, 0.2, len(table)) if len(table) > 1 else [0.0]
        for offset, (method, values) in zip(offsets, table.items()):
            xs = [i + offset for i, v in enumerate(values) if v is not None]
            ys = [v for v in values if v is not None]
            axis.scatter(xs, ys, s=14, color=colours[method], label=method, zorder=3)
            for x, y in zip(xs, ys):
                axis.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 4), fontsize=5,
                              ha="center", color=colours[method])
        axis.set_xticks(range(len(labels)))
        axis.set_xticklabels(labels, rotation=30, ha="right")
        axis.set_title(title)
        axis.set_ylabel("accuracy (%)")
        axis.margins(y=0.15)   # room for the values over the highest dots
        axis.grid(True, axis="y", linewidth=0.3)
    legend_below(fig, methods, colours)
    return fig
