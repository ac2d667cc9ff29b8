"""Paper tables from an output/ tree: base-to-new (Base, New, H), cross-dataset and domain generalisation.

Every cell is the mean over the seeds that finished; H = 2BN/(B+N) from the seed-averaged Base and New
(the average row likewise, from the averaged Base and New, as the CoCoOp paper does). Missing and
unfinished runs are listed, and a cell whose seeds are not all there is marked with `*`.

usage: python -m tools.report output/ [--trainers MuPL CoCoOp] [--std] [--seeds 1 2 3] [--out DIR]
"""
import argparse
import csv
import io
import os
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np

from parse_test_res import read_run_result, run_logs

BASE2NEW_DATASETS = {
    "imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars", "oxford_flowers": "OxfordFlowers", "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DescribableTextures",
    "eurosat": "EuroSAT", "ucf101": "UCF101",
}
XD_TARGETS = [name for name in BASE2NEW_DATASETS if name != "imagenet"]
DG_TARGETS = {"imagenetv2": "-V2", "imagenet_sketch": "-Sketch", "imagenet_a": "-A", "imagenet_r": "-R"}
REFERENCE_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_results.csv")
SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass
class Cell:
    """One accuracy over seeds: the values found and the seeds that are missing or unfinished."""
    values: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)

    @property
    def mean(self):
        return float(np.mean(list(self.values.values()))) if self.values else None

    @property
    def std(self):
        return float(np.std(list(self.values.values()))) if self.values else None


def harmonic_mean(base, new):
    return 2 * base * new / (base + new) if base is not None and new is not None and base + new > 0 else None


OTHER_DATASETS = {"toy_shapes": "ToyShapes"}   # the demo's world; never part of the 11-dataset average


def dataset_label(name):
    return BASE2NEW_DATASETS.get(name) or OTHER_DATASETS.get(name, name)


def read_cell(run_dirs, seeds, phase, problems):
    """Collect one seed-averaged cell from {seed: folder}; note every missing or unfinished seed."""
    cell = Cell()
    for seed in seeds:
        folder = run_dirs.get(seed)
        value = read_run_result(folder)[0] if folder else None
        if value is None:
            state = "unfinished" if folder and run_logs(folder) else "missing"
            cell.missing.append(seed)
            problems.append(f"{phase}: seed {seed} {state}")
        else:
            cell.values[seed] = value
    return cell


def seed_folders(folder):
    """{seed: path} of the seed<N> subfolders of a folder."""
    if not os.path.isdir(folder):
        return {}
    found = {}
    for name in os.listdir(folder):
        match = SEED_DIR.match(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    return found


def list_dirs(folder):
    return sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))) \
        if os.path.isdir(folder) else []


def collect_base2new(root, seeds, trainers):
    """{method: {dataset: (base Cell, new Cell)}} and the problems found, from output/base2new/."""
    table, problems = {}, []
    train_root = os.path.join(root, "base2new", "train_base")
    test_root = os.path.join(root, "base2new", "test_new")
    datasets = sorted(set(list_dirs(train_root)) | set(list_dirs(test_root)))
    for dataset in datasets:
        for shots in sorted(set(list_dirs(os.path.join(train_root, dataset)))
                            | set(list_dirs(os.path.join(test_root, dataset)))):
            common_roots = [os.path.join(r, dataset, shots) for r in (train_root, test_root)]
            for trainer in sorted(set(list_dirs(common_roots[0])) | set(list_dirs(common_roots[1]))):
                if trainers and trainer not in trainers:
                    continue
                for cfg in sorted(set(list_dirs(os.path.join(common_roots[0], trainer)))
                                  | set(list_dirs(os.path.join(common_roots[1], trainer)))):
                    method = f"{trainer} ({cfg})" if shots == "shots_16" else f"{trainer} ({cfg}, {shots})"
                    notes = []
                    base = read_cell(seed_folders(os.path.join(common_roots[0], trainer, cfg)), seeds,
                                     "train_base", notes)
                    new = read_cell(seed_folders(os.path.join(common_roots[1], trainer, cfg)), seeds,
                                    "test_new", notes)
                    problems += [f"{method} {dataset} {note}" for note in notes]
                    table.setdefault(method, {})[dataset] = (base, new)
    return table, problems


def collect_transfer(root, seeds, trainers, targets):
    """{method: {dataset: Cell}} for the ImageNet source and the given targets, and the problems found."""
    table, problems = {}, []
    source_root = os.path.join(root, "imagenet")
    eval_root = os.path.join(root, "evaluation")
    for trainer in sorted(set(list_dirs(source_root)) | set(list_dirs(eval_root))):
        if trainers and trainer not in trainers:
            continue
        for run_name in sorted(set(list_dirs(os.path.join(source_root, trainer)))
                               | set(list_dirs(os.path.join(eval_root, trainer)))):
            target_dirs = {t: os.path.join(eval_root, trainer, run_name, t) for t in targets}
            if not any(os.path.isdir(path) for path in target_dirs.values()):
                continue
            method = f"{trainer} ({re.sub(r'_16shots$', '', run_name)})"  # other shot counts stay visible
            notes = []
            cells = {"imagenet": read_cell(seed_folders(os.path.join(source_root, trainer, run_name)),
                                           seeds, "imagenet source", notes)}
            for target, folder in target_dirs.items():
                cells[target] = read_cell(seed_folders(folder), seeds, f"evaluation {target}", notes)
            problems += [f"{method} {note}" for note in notes]
            table[method] = cells
    return table, problems


def read_reference(path=REFERENCE_CSV):
    """{method: {dataset: (base, new, hm)}} of the published base-to-new results."""
    reference = {}
    for row in reference_rows(path):
        reference.setdefault(row["method"], {})[row["dataset"]] = (
            float(row["base"]), float(row["new"]), float(row["hm"]))
    return reference


def reference_sources(path=REFERENCE_CSV):
    """{method: where its published numbers come from}."""
    return {row["method"]: row["source"] for row in reference_rows(path)}


def reference_rows(path):
    with open(path, encoding="utf-8") as csv_file:
        return list(csv.DictReader(line for line in csv_file if not line.startswith("#")))


# A published method is shown next to the measured trainer of the same name ("IVLP (2+2 ctx, depth 12)" next
# to IVLP, "MuPL-paper-derived" next to MuPL); zero-shot CLIP's trainer has another name.
PUBLISHED_AS = {"CLIP": "ZeroshotCLIP"}


def trainer_of_published(name):
    first = re.split(r"[ (-]", name, maxsplit=1)[0]
    return PUBLISHED_AS.get(first, first)


def average_published(results, labels):
    """The published Average row when all 11 datasets are asked for, else the mean over those labels."""
    if len(labels) == len(BASE2NEW_DATASETS) and "Average" in results:
        return results["Average"]
    if not labels or not all(label in results for label in labels):
        return None
    base = float(np.mean([results[label][0] for label in labels]))
    new = float(np.mean([results[label][1] for label in labels]))
    return base, new, harmonic_mean(base, new)


def measured_row(base, new):
    """The table row of one dataset (None until both base and new have a result); H from the means."""
    if base.mean is None or new.mean is None:
        return None
    return {"base": base.mean, "new": new.mean, "hm": harmonic_mean(base.mean, new.mean),
            "base_std": base.std, "new_std": new.std, "complete": not base.missing and not new.missing}


def average_row(rows):
    base = float(np.mean([row["base"] for row in rows]))
    new = float(np.mean([row["new"] for row in rows]))
    return {"base": base, "new": new, "hm": harmonic_mean(base, new), "base_std": None, "new_std": None,
            "complete": all(row["complete"] for row in rows)}


def cocoop_measured(table):
    """The measured CoCoOp method with the most datasets, or None."""
    candidates = [m for m in table if m.startswith("CoCoOp (")]
    return max(candidates, key=lambda m: len(table[m])) if candidates else None


def base2new_rows(table, reference, sources=None):
    """Rows (dataset, method, source, base, new, hm, deltas...) of the base-to-new table, and notes. A
    published row follows the measured row of its method, with its source."""
    sources = sources or {}
    measured = {m: {d: row for d, (b, n) in cells.items() if (row := measured_row(b, n))}
                for m, cells in table.items()}
    datasets = [d for d in BASE2NEW_DATASETS if any(d in rows for rows in measured.values())]
    datasets += sorted({d for rows in measured.values() for d in rows} - set(datasets))
    cocoop = cocoop_measured(table)
    published_cocoop = reference.get("CoCoOp", {})
    notes = []

    def cocoop_reference(dataset_keys):
        if cocoop and all(d in measured[cocoop] for d in dataset_keys):
            rows = [measured[cocoop][d] for d in dataset_keys]
            row = rows[0] if len(rows) == 1 else average_row(rows)
            return (row["base"], row["new"], row["hm"]), f"measured {cocoop}"
        labels = [dataset_label(d) for d in dataset_keys]
        values = published_cocoop.get(labels[0]) if len(labels) == 1 else average_published(published_cocoop, labels)
        return values, "published CoCoOp" if values else ""

    out = []
    for dataset in datasets + ["Average"]:
        labels = [dataset_label(d) for d in datasets if d in BASE2NEW_DATASETS] if dataset == "Average" \
            else [dataset_label(dataset)]
        published = {}
        for name, results in reference.items():
            values = average_published(results, labels) if dataset == "Average" else results.get(labels[0])
            if values is not None:
                published[name] = {"dataset": dataset_label(dataset), "method": f"{name} [published]",
                                   "source": sources.get(name, ""), "base": values[0], "new": values[1],
                                   "hm": values[2], "base_std": None, "new_std": None, "complete": True,
                                   "vs": "", "delta": None}
        for method in sorted(measured):
            if dataset == "Average":
                present = [d for d in BASE2NEW_DATASETS if d in measured[method]]
                if not present:
                    continue
                row = average_row([measured[method][d] for d in present])
                label = "all 11" if len(present) == len(BASE2NEW_DATASETS) else f"{len(present)}/11: " + \
                    ", ".join(dataset_label(d) for d in present)
                notes.append(f"Average of {method} over {label} datasets.")
                keys = present
            elif dataset in measured[method]:
                row, keys = measured[method][dataset], [dataset]
            else:
                continue
            ref, ref_source = cocoop_reference(keys)
            out.append({"dataset": dataset_label(dataset), "method": method, "source": "measured",
                        **row, "vs": ref_source, "delta": ref})
            trainer = method.split(" (")[0]
            out += [published.pop(name) for name in list(published) if trainer_of_published(name) == trainer]
        out += published.values()
    for row in out:
        ref = row.pop("delta")
        row["d_base"], row["d_new"], row["d_hm"] = (
            (row["base"] - ref[0], row["new"] - ref[1], row["hm"] - ref[2]) if ref else (None, None, None))
    return out, notes


def number(value, std=None, show_std=False):
    if value is None:
        return "-"
    text = f"{value:.2f}"
    return f"{text} ± {std:.2f}" if show_std and std is not None else text


def signed(value):
    return "-" if value is None else f"{value:+.2f}"


def base2new_table(rows, show_std):
    header = ["Dataset", "Method", "Base", "New", "H", "ΔBase", "ΔNew", "ΔH", "Δ vs", "Source"]
    body = []
    for row in rows:
        mark = "" if row["complete"] else " *"
        body.append([row["dataset"], row["method"] + mark, number(row["base"], row["base_std"], show_std),
                     number(row["new"], row["new_std"], show_std), number(row["hm"]),
                     signed(row["d_base"]), signed(row["d_new"]), signed(row["d_hm"]), row["vs"], row["source"]])
    return header, body


def base2new_csv_rows(rows):
    """The base-to-new rows as numbers (std always included, empty when not applicable) for spreadsheets."""
    header = ["dataset", "method", "source", "base", "new", "hm", "base_std", "new_std", "all_seeds",
              "d_base", "d_new", "d_hm", "d_vs"]

    def plain(value):
        return "" if value is None else round(value, 4)

    body = [[row["dataset"], row["method"], row["source"], plain(row["base"]), plain(row["new"]),
             plain(row["hm"]), plain(row["base_std"]), plain(row["new_std"]), row["complete"],
             plain(row["d_base"]), plain(row["d_new"]), plain(row["d_hm"]), row["vs"]] for row in rows]
    return header, body


def transfer_table(table, columns, show_std):
    """Header and rows of a cross-dataset or domain generalisation table (average over the targets)."""
    header = ["Method"] + [label for _, label in columns] + ["Average (targets)"]
    body = []
    for method, cells in sorted(table.items()):
        row = [method]
        target_means = []
        for key, _ in columns:
            cell = cells[key]
            text = number(cell.mean, cell.std, show_std)
            row.append(text + (" *" if cell.missing and cell.mean is not None else ""))
            if key != "imagenet":
                target_means.append(cell.mean)
        complete = all(v is not None for v in target_means)
        row.append(number(float(np.mean(target_means))) if complete else "-")
        body.append(row)
    return header, body


def markdown(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def latex(header, body):
    def escape(text):
        return str(text).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
    lines = [r"\begin{tabular}{" + "l" * 2 + "r" * (len(header) - 2) + "}", r"\toprule",
             " & ".join(escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(escape(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def csv_text(header, body):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buffer.getvalue()


def write_atomic(path, data):
    """Write bytes or text through a temp file in the same folder, then os.replace: no half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(payload)
        os.replace(temp_path, path)
    except OSError:
        os.unlink(temp_path)
        raise


def figure_png(rows):
    """PNG bytes: per dataset, H of each method, and each measured method's ΔH to CoCoOp."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    measured = [m for m in methods if any(r["method"] == m and r["source"] == "measured" for r in rows)]
    lookup = {(row["dataset"], row["method"]): row for row in rows}
    fig, (ax_h, ax_delta) = plt.subplots(1, 2, figsize=(14, 5), dpi=100)
    positions = np.arange(len(datasets))
    for axis, plotted, key, title in ((ax_h, methods, "hm", "H (harmonic mean of base and new)"),
                                      (ax_delta, measured, "d_hm", "ΔH to CoCoOp")):
        width = 0.8 / max(len(plotted), 1)
        for index, method in enumerate(plotted):
            heights = [lookup.get((d, method), {}).get(key) for d in datasets]
            heights = [np.nan if h is None else h for h in heights]
            axis.bar(positions + index * width - 0.4 + width / 2, heights, width, label=method)
        axis.set_xticks(positions)
        axis.set_xticklabels(datasets, rotation=45, ha="right", fontsize=8)
        axis.set_title(title)
        axis.axhline(0, color="black", linewidth=0.5)
    handles, labels = ax_h.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=7)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def build_report(root, trainers=None, seeds=(1, 2, 3), show_std=False, reference_path=REFERENCE_CSV):
    """{file name: content} of the whole report, and the Markdown text."""
    reference = read_reference(reference_path)
    base2new, problems = collect_base2new(root, seeds, trainers)
    rows, notes = base2new_rows(base2new, reference, reference_sources(reference_path))
    files = {}
    sections = ["# Results report", f"Seeds expected: {', '.join(map(str, seeds))}. Cells are means over "
                "seeds; `*` marks a cell with some seeds missing or unfinished. H = 2BN/(B+N) from the "
                "averaged Base and New. Δ = measured minus CoCoOp (the `Δ vs` column says which CoCoOp)."]
    if rows:   # a tree with unfinished runs only has no table (they are listed below)
        files["base2new.csv"] = csv_text(*base2new_csv_rows(rows))
        header, body = base2new_table(rows, show_std)
        files["base2new.tex"] = latex(header, body)
        files["base2new.png"] = figure_png(rows)
        notes.append("[published] rows follow the measured row of the same method; their averages are over the "
                     "same datasets as the table (their own Average row when all 11 are there); a published "
                     "method without those datasets is left out. Sources: tools/reference_results.csv.")
        sections += ["## Base-to-new generalisation", markdown(header, body), "\n".join(f"- {n}" for n in notes)]
    for name, title, columns in (
            ("cross_dataset", "Cross-dataset transfer (source ImageNet)",
             [("imagenet", "ImageNet")] + [(t, dataset_label(t)) for t in XD_TARGETS]),
            ("domain_generalization", "Domain generalisation (source ImageNet)",
             [("imagenet", "ImageNet")] + [(t, label) for t, label in DG_TARGETS.items()])):
        targets = [key for key, _ in columns if key != "imagenet"]
        table, transfer_problems = collect_transfer(root, seeds, trainers, targets)
        problems += transfer_problems
        if table:
            header, body = transfer_table(table, columns, show_std)
            files[f"{name}.csv"] = csv_text(header, body)
            files[f"{name}.tex"] = latex(header, body)
            sections += [f"## {title}", markdown(header, body)]
    sections.append("## Missing or unfinished runs")
    sections.append("\n".join(f"- {p}" for p in sorted(set(problems))) if problems else "None.")
    text = "\n\n".join(sections) + "\n"
    files["report.md"] = text
    return files, text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the output/ folder of the runs")
    parser.add_argument("--trainers", nargs="+", help="only these trainers (default: all found)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds every run should have")
    parser.add_argument("--std", action="store_true", help="show the std over seeds (population, as CoOp)")
    parser.add_argument("--out", help="report folder (default: ROOT/report)")
    args = parser.parse_args(argv)
    files, text = build_report(args.root, args.trainers, tuple(args.seeds), args.std)
    out_dir = args.out or os.path.join(args.root, "report")
    for name, content in files.items():
        write_atomic(os.path.join(out_dir, name), content)
    print(text)
    print(f"Written to {out_dir}: {', '.join(sorted(files))}")


if __name__ == "__main__":
    main()
