"""The report's figures (matplotlib), each a Figure whose artists hold the plotted numbers, saved as PNG by
tools.report: base-to-new Base vs New with iso-H curves and H per dataset with the seeds' spread,
few-shot accuracy vs shots (CoOp's figure), and the cross-dataset / domain generalisation targets.

Laid out in inches from the number of panels and methods (panels of about 1.5 inches, 6-9 pt text, at
most a 7-inch page wide), so one dataset and ten methods read as well as eleven datasets and two methods:
each method has a colour-blind-safe colour and its own marker, legends get room of their own below the
panels, and the values are written horizontally where they do not collide."""
import io

import numpy as np

ISO_H_LEVELS = (20, 30, 40, 50, 60, 70, 80, 90)
PAGE_WIDTH = 7.0   # inches: a two-column paper's full width
FONT = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
        "xtick.labelsize": 7, "ytick.labelsize": 7}
# Paul Tol's "muted" scheme (colour-blind safe) and black; with a marker each, ten methods stay apart in grey.
PALETTE = ("#332288", "#CC6677", "#117733", "#DDCC77", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499",
           "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
CHAR = 0.055      # inches per character of 7 pt text, to size the room for labels
LINE = 0.16       # inches per line of 7 pt text


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(FONT)
    return plt


def png(fig):
    """PNG bytes of a figure, which is then closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight", pad_inches=0.05)
    pyplot().close(fig)
    return buffer.getvalue()


def styles(methods):
    """{method: (colour, marker)}: the same for a method in every figure of one report."""
    return {m: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}


def dark(colour):
    """A method's colour darkened for text, so the paler ones stay readable on white."""
    from matplotlib.colors import to_rgb

    return tuple(0.65 * c for c in to_rgb(colour))


def split_name(method):
    """'CoCoOp (cfg, shots_4) on B' -> ('CoCoOp', ['cfg', 'shots_4'], ' on B'), as tools.report names them."""
    head, _, rest = method.partition(" (")
    if not rest or ")" not in rest:
        return method, [], ""
    details, _, tail = rest.rpartition(")")
    return head, details.split(", "), tail


def short_labels(methods):
    """{method: label} and the details all methods share (for the caption): a method is its trainer's name,
    with the config/shots that tell it apart from its namesakes only where one trainer appears with several."""
    parts = {m: split_name(m) for m in methods}
    common = [d for d in parts[methods[0]][1] if all(d in p[1] for p in parts.values())] if methods else []
    labels = {}
    for method, (head, details, tail) in parts.items():
        group = [p[1] for p in parts.values() if p[0] + p[2] == head + tail]
        own = [d for d in details if not all(d in other for other in group)] or details
        labels[method] = head + (f" ({', '.join(own)})" if len(group) > 1 else "") + tail
    return labels, ", ".join(common)


def layout(count, columns, cell, axes_size, left, bottom, top=0.25, legend=0.0, caption="", margin=0.0):
    """A figure of ``count`` panels in rows of ``columns``, each ``cell`` = (width, height) inches with its
    axes ``axes_size`` placed ``left``/``bottom`` inches inside it, ``margin`` inches on the left for row
    labels, ``legend`` inches kept free below for the shared legend and a caption line above; returns the
    figure and the axes."""
    plt = pyplot()
    rows = max(1, -(-count // columns))
    head = top + (LINE if caption else 0)
    width, height = margin + columns * cell[0], rows * cell[1] + legend + head - top
    fig = plt.figure(figsize=(width, height))
    axes = []
    for index in range(count):
        row, column = divmod(index, columns)
        x0 = margin + column * cell[0] + left
        y0 = height - head + top - (row + 1) * cell[1] + bottom
        axes.append(fig.add_axes((x0 / width, y0 / height, axes_size[0] / width, axes_size[1] / height)))
    if caption:
        fig.text(0.5, 1 - 0.05 / height, caption, ha="center", va="top", fontsize=7, color="0.3")
    return fig, axes


def legend_columns(methods, labels, width):
    """How many legend entries fit side by side in ``width`` inches."""
    longest = max(len(labels[m]) for m in methods)
    return max(1, min(len(methods), int(width // (CHAR * longest + 0.45))))


def legend_height(methods, labels, width):
    """Inches to keep free under the panels for the shared legend."""
    return LINE * -(-len(methods) // legend_columns(methods, labels, width)) + 0.1


def legend_below(fig, methods, labels, style, line=True):
    """One legend for all panels, in the room kept free under them (``legend_height``)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=style[m][0], marker=style[m][1], markersize=4, linewidth=1 if line else 0,
                      label=labels[m]) for m in methods]
    fig.legend(handles=handles, loc="lower center", ncol=legend_columns(methods, labels, fig.get_figwidth()),
               frameon=False, bbox_to_anchor=(0.5, 0), handlelength=1.6 if line else 1.0, columnspacing=1.2)


def dodge(values, gap, low, high):
    """Positions for labels at ``values``, at least ``gap`` apart, kept within [low, high] and in order."""
    order = np.argsort(values)
    placed = np.asarray(values, dtype=float)[order]
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + gap)
    overflow = placed[-1] - high if len(placed) else 0
    if overflow > 0:
        placed -= overflow
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - gap)
    placed = np.maximum(placed, low + gap * np.arange(len(placed)))
    out = np.empty_like(placed)
    out[order] = placed
    return out


def iso_h(axis, low, high):
    """Dashed curves of equal H = 2BN/(B+N) (N = HB / (2B - H)), labelled near their upper-left end."""
    base = np.linspace(low, high, 200)
    for level in ISO_H_LEVELS:
        with np.errstate(divide="ignore", invalid="ignore"):
            new = level * base / (2 * base - level)
        shown = (base > level / 2) & (new >= low) & (new <= high)
        if shown.sum() < 2:
            continue
        axis.plot(base[shown], new[shown], linestyle="--", linewidth=0.5, color="0.75", zorder=0,
                  label=f"_iso-H {level}", gid=f"iso-H {level}")
        end = int(shown.sum() * 0.2)
        if not low + 0.12 * (high - low) < new[shown][end] < high - 0.1 * (high - low):
            continue   # a label at the panel's edge would be cut
        axis.text(base[shown][end], new[shown][end], f"H={level}", fontsize=5.5, color="0.55", ha="left",
                  va="bottom", rotation=-35, rotation_mode="anchor")


def measured(rows):
    return [row for row in rows if row["source"] == "measured"]


def names_of(rows, key):
    return list(dict.fromkeys(row[key] for row in rows))


def base_vs_new(rows):
    """Per dataset and for the average: each measured method at (Base, New) over iso-H curves (up and to
    the right is better on both), and beside the panel a small table of the methods from best H down
    (marker, name, H), which names the points without labels crowding them. Where the names would make
    the figure wider than the page, the tables keep marker and H and one legend below names the markers."""
    rows = measured(rows)
    datasets, methods = names_of(rows, "dataset"), names_of(rows, "method")
    style = styles(methods)
    labels, common = short_labels(methods)
    size, left = 1.4, 0.45
    named = 0.3 + CHAR * 6 / 7 * max(len(label) for label in labels.values()) + 0.3
    columns = min(len(datasets), 3)
    table = named if columns * (left + size + named) <= PAGE_WIDTH + 0.1 else 0.5
    room = 0.0 if table == named else legend_height(methods, labels, columns * (left + size + table))
    fig, axes = layout(len(datasets), columns, (left + size + table, size + 0.6), (size, size), left=0.4,
                       bottom=0.35, legend=room, caption=f"all methods: {common}" if common else "")
    step = min(0.085, 0.9 / (len(methods) + 1))   # a table row, in axes fractions
    value_x = 1.0 + (table - 0.1) / size
    for axis, dataset in zip(axes, datasets):
        points = sorted((row for row in rows if row["dataset"] == dataset), key=lambda row: -row["hm"])
        values = [v for row in points for v in (row["base"], row["new"])]
        low, high = max(0.0, min(values) - 4), min(100.0, max(values) + 4)
        iso_h(axis, low, high)
        if not room:
            axis.text(1.04, 1.0, "method", transform=axis.transAxes, fontsize=6, va="top", fontweight="bold")
        axis.text(value_x, 1.0, "H", transform=axis.transAxes, fontsize=6, va="top", ha="right",
                  fontweight="bold")
        for index, row in enumerate(points):
            colour, marker = style[row["method"]]
            axis.scatter([row["base"]], [row["new"]], s=22, color=colour, marker=marker, zorder=3,
                         edgecolors="white", linewidths=0.4, label=labels[row["method"]])
            y = 1.0 - step * (index + 1.5)
            axis.plot([1.07], [y], transform=axis.transAxes, clip_on=False, color=colour, marker=marker,
                      markersize=3.5, linestyle="")
            if not room:
                axis.text(1.12, y, labels[row["method"]], transform=axis.transAxes, fontsize=6, va="center")
            axis.text(value_x, y, f"{row['hm']:.1f}", transform=axis.transAxes, fontsize=6, va="center",
                      ha="right")
        axis.set_xlim(low, high)
        axis.set_ylim(low, high)
        axis.set_title(dataset)
        axis.set_xlabel("Base")
        axis.set_ylabel("New")
        axis.grid(True, linewidth=0.3)
    if room:
        legend_below(fig, methods, labels, style, line=False)
    return fig


def harmonic_bars(rows):
    """H per dataset (and the average): a panel per dataset, a row per method (same order in every panel),
    its H as a dot with the seeds' spread (std of the per-seed H) as error bar and the value beside it;
    dots, not bars, so each axis can start near its values and a spread of a point stays visible."""
    rows = measured(rows)
    datasets, methods = names_of(rows, "dataset"), names_of(rows, "method")
    style = styles(methods)
    labels, common = short_labels(methods)
    lookup = {(row["dataset"], row["method"]): row for row in rows}
    names = 0.1 + CHAR * max(len(label) for label in labels.values())
    size = (1.3, 0.14 * len(methods) + 0.15)
    columns = max(1, min(len(datasets), int((PAGE_WIDTH - names) // (size[0] + 0.15))))
    fig, axes = layout(len(datasets), columns, (size[0] + 0.15, size[1] + 0.6), size, left=0.05, bottom=0.35,
                       caption=f"all methods: {common}" if common else "", margin=names)
    for index, (axis, dataset) in enumerate(zip(axes, datasets)):
        found = [(row_index, lookup[(dataset, m)]) for row_index, m in enumerate(methods) if (dataset, m) in lookup]
        low = min(row["hm"] - (row.get("hm_std") or 0) for _, row in found)
        high = max(row["hm"] + (row.get("hm_std") or 0) for _, row in found)
        span = max(high - low, 2.0)
        for row_index, row in found:
            colour, marker = style[row["method"]]
            spread = row.get("hm_std") or 0.0
            axis.errorbar([row["hm"]], [row_index], xerr=[spread], fmt=marker, markersize=3.5, capsize=1.5,
                          elinewidth=0.7, color=colour, label=row["method"])
            axis.annotate(f"{row['hm']:.1f}", (row["hm"] + spread, row_index), textcoords="offset points",
                          xytext=(3, 0), fontsize=6, va="center", ha="left", color=dark(colour))
        axis.set_xlim(low - 0.08 * span, high + 0.35 * span)   # room for the values on the right
        axis.set_ylim(len(methods) - 0.5, -0.5)
        axis.set_yticks(range(len(methods)))
        axis.set_yticklabels([labels[m] for m in methods] if index % columns == 0 else [])
        axis.tick_params(axis="y", length=0)
        axis.set_title(dataset)
        axis.set_xlabel("H")
        axis.grid(True, axis="x", linewidth=0.3)
    return fig


def accuracy_vs_shots(curves):
    """Few-shot: ``curves`` {panel (dataset or Average): {method: [(shots, mean, std), ...]}}; one line per
    method, shots on a log-2 axis, error bars the seeds' spread, the last point's value written right of
    the panel (moved apart where values are close, in the lines' order)."""
    panels = list(curves)
    methods = list(dict.fromkeys(method for panel in curves.values() for method in panel))
    style = styles(methods)
    labels, common = short_labels(methods)
    columns = min(len(panels), 4)
    size = (min(1.45, (PAGE_WIDTH - 0.2) / columns - 0.65), max(1.2, 0.1 * len(methods) + 0.3))
    room = legend_height(methods, labels, 0.2 + columns * (size[0] + 0.65))
    fig, axes = layout(len(panels), columns, (size[0] + 0.65, size[1] + 0.6), size, left=0.28, bottom=0.35,
                       legend=room, caption=f"all methods: {common}" if common else "", margin=0.2)
    for axis, panel in zip(axes, panels):
        ends = []
        for method, points in curves[panel].items():
            shots, means, stds = zip(*sorted(points))
            colour, marker = style[method]
            axis.errorbar(shots, means, yerr=stds, marker=marker, markersize=3, linewidth=1, capsize=1.5,
                          color=colour, label=method)
            ends.append((means[-1], style[method]))
        all_shots = sorted({s for points in curves[panel].values() for s, _, _ in points})
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_shots)
        axis.set_xticklabels([str(s) for s in all_shots])
        low, high = axis.get_ylim()
        axis.set_ylim(low, high)
        gap = (high - low) * 6.5 / 72 / size[1]   # one 6 pt line
        places = dodge([value for value, _ in ends], gap, low + gap / 2, high - gap / 2)
        for y, (value, (colour, marker)) in zip(places, ends):
            axis.plot([1.05], [y], transform=axis.get_yaxis_transform(), clip_on=False, color=colour,
                      marker=marker, markersize=3, linestyle="")
            axis.text(1.09, y, f"{value:.1f}", transform=axis.get_yaxis_transform(), fontsize=6, va="center",
                      color=dark(colour))
        axis.set_title(panel)
        axis.set_xlabel("shots per class")
        if axes.index(axis) % columns == 0:
            axis.set_ylabel("accuracy (%)")
        axis.grid(True, linewidth=0.3)
    legend_below(fig, methods, labels, style)
    return fig


def transfer(panels):
    """Cross-dataset and domain generalisation: ``panels`` {title: (target labels, {method: [mean or
    None per target]})}; a table in colour, a row per method (same rows in every panel) and a column per
    target, each cell its value ("-": not run); a colour scale shared by the panels (cividis, readable in grey)."""
    methods = list(dict.fromkeys(method for _, table in panels.values() for method in table))
    labels, common = short_labels(methods)
    values = [v for _, table in panels.values() for row in table.values() for v in row if v is not None]
    low, high = min(values), max(values)
    names = 0.1 + CHAR * max(len(label) for label in labels.values())
    columns = sum(len(targets) for targets, _ in panels.values())
    cell = (min(0.45, (PAGE_WIDTH - names - 0.25 * len(panels)) / columns), 0.2)   # "88.8" needs 0.3
    widths = [len(targets) * cell[0] for targets, _ in panels.values()]
    plt = pyplot()
    height = len(methods) * cell[1] + 0.95 + (LINE if common else 0)
    fig = plt.figure(figsize=(names + sum(widths) + 0.25 * len(panels), height))
    x = names
    for title, (targets, table) in panels.items():
        width = len(targets) * cell[0]
        axis = fig.add_axes((x / fig.get_figwidth(), 0.75 / height, width / fig.get_figwidth(),
                             len(methods) * cell[1] / height))
        grid = np.array([[np.nan if v is None else v for v in table.get(m, [None] * len(targets))]
                         for m in methods], dtype=float)
        colours = pyplot().get_cmap("cividis").with_extremes(bad="0.93")
        image = axis.imshow(np.ma.masked_invalid(grid), cmap=colours, vmin=low - 5, vmax=high, aspect="auto")
        for (row, column), value in np.ndenumerate(grid):
            shade = (value - low + 5) / (high - low + 5)
            text, colour = ("-", "0.5") if np.isnan(value) else (f"{value:.1f}", "black" if shade > 0.55 else "white")
            axis.text(column, row, text, ha="center", va="center", fontsize=6, color=colour)
        axis.set_xticks(range(len(targets)))
        axis.set_xticklabels(targets, rotation=35, ha="right")
        axis.set_yticks(range(len(methods)))
        axis.set_yticklabels([labels[m] for m in methods] if x == names else [])
        axis.tick_params(length=0)
        axis.set_title(title)
        image.set_gid(title)
        x += width + 0.25
    if common:
        fig.text(0.5, 1 - 0.05 / height, f"all methods: {common}", ha="center", va="top", fontsize=7,
                 color="0.3")
    return fig
