"""Paper tables and figures from an output/ tree: base-to-new (Base, New, H), few-shot, cross-dataset and
domain generalisation, each with the provenance of its cells.

Every cell is the mean ± std (population, as CoOp) over the seeds that finished, and names those seeds;
H = 2BN/(B+N) from the seed-averaged Base and New (the average row likewise, from the averaged Base and
New, as the CoCoOp paper does), its spread the std of the per-seed H. Missing and unfinished runs are
listed, and a cell whose seeds are not all there is marked with `*`. Each run's run.json says what made
it (tools/provenance.py): a cell whose seeds come from different code, weights, splits or configs is
marked `≠` and listed (``--strict`` refuses it); runs on different backbones are never one cell. A Δ to
CoCoOp is marked `†` when it exceeds the two methods' seed spread: |Δ| > std(method) + std(CoCoOp) (see
docs/results.md for why).

usage: python -m tools.report output/ [--trainers MuPL CoCoOp] [--seeds 1 2 3] [--strict] [--by-backbone]
                                      [--out DIR]
"""
import argparse
import csv
import io
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from parse_test_res import read_run_result, run_logs
from tools import figures
from tools.provenance import backbone_of, code_label, config_digest, read_record, same_code

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
SHOTS_DIR = re.compile(r"^shots_(\d+)$")
UNKNOWN_BACKBONE = "?"
MIXED, EXCEEDS = "≠", "†"


@dataclass
class Cell:
    """One accuracy over seeds: the values found, the seeds missing or unfinished, and what made each
    seed's run (its run.json, None for a run made before run.json existed) and on which backbone."""
    values: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    records: dict = field(default_factory=dict)
    backbones: dict = field(default_factory=dict)

    @property
    def mean(self):
        return float(np.mean(list(self.values.values()))) if self.values else None

    @property
    def std(self):
        return spread(self.values)

    def on(self, backbone, seeds):
        """The cell of the seeds run on ``backbone``; the other seeds count as missing."""
        kept = [s for s in self.values if self.backbones.get(s) == backbone]
        return Cell({s: self.values[s] for s in kept}, [s for s in seeds if s not in kept],
                    {s: self.records[s] for s in kept}, {s: backbone for s in kept})

    def identities(self):
        """{seed: (code, weights, split, config)} of the seeds with a run.json."""
        return {seed: identity(record) for seed, record in self.records.items() if record}

    def mixed(self):
        """The parts (code, weights, split, config) in which this cell's seeds differ; code versions differ
        only where their code does (not a commit of documentation or tests alone)."""
        found = list(self.identities().values())
        parts = [name for index, name in enumerate(IDENTITY_PARTS) if len({f[index] for f in found}) > 1]
        codes = [record.get("code") or {} for record in self.records.values() if record]
        if "code" in parts and all(same_code(codes[0], code) for code in codes[1:]):
            parts.remove("code")
        return parts


IDENTITY_PARTS = ("code", "weights", "split", "config")


def identity(record):
    """What must be equal for two seeds of one cell: code version, weights, split file and config."""
    weights = record.get("weights") or {}
    split = record.get("split") or {}
    return (code_label(record.get("code")), weights.get("sha256") or weights.get("name") or "?",
            split.get("sha256") or "?", config_digest(record))


def backbone_from_log(log_path):
    """MODEL.BACKBONE.NAME from the config a log prints (runs without run.json), else UNKNOWN_BACKBONE."""
    section = None
    with open(log_path, encoding="utf-8", errors="replace") as log_file:
        for line in log_file:
            line = line.rstrip("\n")
            if line == "MODEL:":
                section = "model"
            elif section == "model" and line == "  BACKBONE:":
                section = "backbone"
            elif section == "backbone" and line.startswith("    NAME: "):
                return line[len("    NAME: "):].strip() or UNKNOWN_BACKBONE
            elif section and not line.startswith("  "):
                section = None
    return UNKNOWN_BACKBONE


WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar")


def short_backbone(name):
    """A backbone as a table shows it: a weights file by its file name, a model name (ViT-B/16,
    ViT-B-16/laion2b_s34b_b88k) as it is."""
    return os.path.basename(name) if name.endswith(WEIGHTS_SUFFIXES) else name


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
        value, log_path = read_run_result(folder) if folder else (None, None)
        if value is None:
            state = "unfinished" if folder and run_logs(folder) else "missing"
            cell.missing.append(seed)
            problems.append(f"{phase}: seed {seed} {state}")
        else:
            cell.values[seed] = value
            cell.records[seed] = read_record(folder)
            cell.backbones[seed] = (backbone_of(cell.records[seed]) if cell.records[seed] else None) \
                or backbone_from_log(log_path)
    return cell


def by_backbone(cells, seeds):
    """{backbone: [the cells restricted to its seeds]}: runs on different backbones never share a cell."""
    found = sorted({b for cell in cells for b in cell.backbones.values()}) or [UNKNOWN_BACKBONE]
    return {backbone: [cell.on(backbone, seeds) for cell in cells] for backbone in found}


def method_label(base_label, backbone, several):
    return f"{base_label} on {short_backbone(backbone)}" if several else base_label


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


def split_backbones(raw, seeds):
    """{label: {key: [Cell, ...]}} with each label split by backbone ("<label> on <backbone>" where one
    label ran on several): runs on different backbones never share a cell, row or average."""
    table = {}
    for label, groups in raw.items():
        backbones = sorted({b for cells in groups.values() for cell in cells for b in cell.backbones.values()})
        if not backbones:   # nothing finished: the cells as read, with their missing seeds
            table[label] = groups
        for backbone in backbones:
            name = method_label(label, backbone, len(backbones) > 1)
            for key, cells in groups.items():
                table.setdefault(name, {})[key] = [cell.on(backbone, seeds) for cell in cells]
    return table


def collect_base2new(root, seeds, trainers):
    """{method: {dataset: (base Cell, new Cell)}} and the problems found, from output/base2new/."""
    raw, problems = {}, []
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
                    raw.setdefault(method, {})[dataset] = [base, new]
    return split_backbones(raw, seeds), problems


def collect_transfer(root, seeds, trainers, targets):
    """{method: {dataset: Cell}} for the ImageNet source and the given targets, and the problems found."""
    raw, problems = {}, []
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
            cells = {"imagenet": [read_cell(seed_folders(os.path.join(source_root, trainer, run_name)),
                                            seeds, "imagenet source", notes)]}
            for target, folder in target_dirs.items():
                cells[target] = [read_cell(seed_folders(folder), seeds, f"evaluation {target}", notes)]
            problems += [f"{method} {note}" for note in notes]
            raw[method] = cells
    table = split_backbones(raw, seeds)
    return {method: {key: cells[0] for key, cells in groups.items()} for method, groups in table.items()}, problems


def collect_fewshot(root, seeds, trainers):
    """{method: {(dataset, shots): Cell}} from output/fewshot/DATASET/shots_K/TRAINER/CFG/, and problems."""
    raw, problems = {}, []
    fewshot_root = os.path.join(root, "fewshot")
    for dataset in list_dirs(fewshot_root):
        for shots_dir in list_dirs(os.path.join(fewshot_root, dataset)):
            match = SHOTS_DIR.match(shots_dir)
            if not match:
                continue
            for trainer in list_dirs(os.path.join(fewshot_root, dataset, shots_dir)):
                if trainers and trainer not in trainers:
                    continue
                for cfg in list_dirs(os.path.join(fewshot_root, dataset, shots_dir, trainer)):
                    method, notes = f"{trainer} ({cfg})", []
                    folder = os.path.join(fewshot_root, dataset, shots_dir, trainer, cfg)
                    cell = read_cell(seed_folders(folder), seeds, f"fewshot {shots_dir}", notes)
                    problems += [f"{method} {dataset} {note}" for note in notes]
                    raw.setdefault(method, {})[(dataset, int(match.group(1)))] = [cell]
    table = split_backbones(raw, seeds)
    return {method: {key: cells[0] for key, cells in groups.items()} for method, groups in table.items()}, problems


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


def spread(per_seed):
    """Population std of per-seed values (as CoOp); None from fewer than two seeds, which have no spread
    to show (a "± 0.00" would read as a measured, perfectly stable result)."""
    return float(np.std(list(per_seed.values()))) if len(per_seed) >= 2 else None


def with_spread(base_seeds, new_seeds):
    """Means, H, their per-seed values and spreads: H's spread is the std of the per-seed H."""
    base, new = float(np.mean(list(base_seeds.values()))), float(np.mean(list(new_seeds.values())))
    hm_seeds = {s: harmonic_mean(base_seeds[s], new_seeds[s]) for s in sorted(set(base_seeds) & set(new_seeds))}
    return {"base": base, "new": new, "hm": harmonic_mean(base, new), "base_std": spread(base_seeds),
            "new_std": spread(new_seeds), "hm_std": spread(hm_seeds), "seeds": sorted(set(base_seeds) | set(new_seeds)),
            "per_seed": {"base": base_seeds, "new": new_seeds}}


def measured_row(base, new):
    """The table row of one dataset (None until both base and new have a result); H from the means."""
    if base.mean is None or new.mean is None:
        return None
    backbones = list(base.backbones.values()) + list(new.backbones.values())
    return {**with_spread(base.values, new.values), "complete": not base.missing and not new.missing,
            "backbone": backbones[0], "mixed": sorted(set(base.mixed()) | set(new.mixed()))}


def average_row(rows):
    """The mean over datasets; its spread over the seeds every dataset has (per-seed averages)."""
    common = set.intersection(*(set(row["per_seed"]["base"]) & set(row["per_seed"]["new"]) for row in rows))
    per_seed = {key: {s: float(np.mean([row["per_seed"][key][s] for row in rows])) for s in sorted(common)}
                for key in ("base", "new")}
    row = with_spread(per_seed["base"], per_seed["new"]) if common else {"hm_std": None, "seeds": []}
    base = float(np.mean([r["base"] for r in rows]))
    new = float(np.mean([r["new"] for r in rows]))
    return {**row, "base": base, "new": new, "hm": harmonic_mean(base, new),
            "complete": all(r["complete"] for r in rows), "backbone": rows[0]["backbone"],
            "mixed": sorted({part for r in rows for part in r["mixed"]})}


def compare(row, ref):
    """Δ of a row to the CoCoOp reference ``ref`` (a row, or published values without spread), and
    whether each Δ exceeds the seed spread: |Δ| > std(row) + std(ref), where the row has 2 seeds or more."""
    for key in ("base", "new", "hm"):
        delta = row[key] - ref[key] if ref else None
        row[f"d_{key}"] = delta
        row[f"d_{key}_exceeds"] = (abs(delta) > row[f"{key}_std"] + (ref.get(f"{key}_std") or 0.0)
                                   if delta is not None and len(row.get("seeds", [])) >= 2 else None)


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
            return (rows[0] if len(rows) == 1 else average_row(rows)), f"measured {cocoop}"
        labels = [dataset_label(d) for d in dataset_keys]
        values = published_cocoop.get(labels[0]) if len(labels) == 1 else average_published(published_cocoop, labels)
        return (dict(zip(("base", "new", "hm"), values)) if values else None), "published CoCoOp" if values else ""

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
                                   "hm": values[2], "base_std": None, "new_std": None, "hm_std": None,
                                   "seeds": [], "complete": True, "backbone": "", "mixed": [], "vs": "",
                                   "delta": None}
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
        compare(row, row.pop("delta"))
    return out, notes


def number(value, std=None):
    """A mean, with its seeds' std when it has one."""
    if value is None:
        return "-"
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def signed(value, exceeds=None):
    """A Δ, marked † when it exceeds the two methods' seed spread."""
    return "-" if value is None else f"{value:+.2f}" + (f" {EXCEEDS}" if exceeds else "")


def seed_list(seeds):
    return ",".join(map(str, seeds))


def row_marks(row):
    return ("" if row["complete"] else " *") + (f" {MIXED}" if row["mixed"] else "")


def base2new_table(rows):
    header = ["Dataset", "Method", "Backbone", "Seeds", "Base", "New", "H", "ΔBase", "ΔNew", "ΔH", "Δ vs",
              "Source"]
    body = []
    for row in rows:
        body.append([row["dataset"], row["method"] + row_marks(row), short_backbone(row["backbone"]),
                     seed_list(row["seeds"]), number(row["base"], row["base_std"]),
                     number(row["new"], row["new_std"]), number(row["hm"], row["hm_std"]),
                     *(signed(row[f"d_{k}"], row[f"d_{k}_exceeds"]) for k in ("base", "new", "hm")),
                     row["vs"], row["source"]])
    return header, body


def plain(value):
    return "" if value is None else round(value, 4)


def base2new_csv_rows(rows):
    """The base-to-new rows as numbers (std always included, empty when not applicable) for spreadsheets."""
    header = ["dataset", "method", "source", "backbone", "seeds", "base", "new", "hm", "base_std", "new_std",
              "hm_std", "all_seeds", "mixed", "d_base", "d_new", "d_hm", "d_vs", "d_base_exceeds_spread",
              "d_new_exceeds_spread", "d_hm_exceeds_spread"]
    body = [[row["dataset"], row["method"], row["source"], row["backbone"], seed_list(row["seeds"]),
             plain(row["base"]), plain(row["new"]), plain(row["hm"]), plain(row["base_std"]),
             plain(row["new_std"]), plain(row["hm_std"]), row["complete"], " ".join(row["mixed"]),
             plain(row["d_base"]), plain(row["d_new"]), plain(row["d_hm"]), row["vs"],
             *("" if row[f"d_{k}_exceeds"] is None else row[f"d_{k}_exceeds"] for k in ("base", "new", "hm"))]
            for row in rows]
    return header, body


def cell_text(cell):
    marks = (" *" if cell.missing and cell.mean is not None else "") + (f" {MIXED}" if cell.mixed() else "")
    return number(cell.mean, cell.std) + marks


def transfer_table(table, columns):
    """Header and rows of a cross-dataset or domain generalisation table (average over the targets)."""
    header = ["Method", "Backbone", "Seeds"] + [label for _, label in columns] + ["Average (targets)"]
    body = []
    for method, cells in sorted(table.items()):
        backbones = [b for key, _ in columns for b in cells[key].backbones.values()] or [UNKNOWN_BACKBONE]
        seeds = sorted({s for key, _ in columns for s in cells[key].values})
        row = [method, short_backbone(backbones[0]), seed_list(seeds)]
        target_means = []
        for key, _ in columns:
            row.append(cell_text(cells[key]))
            if key != "imagenet":
                target_means.append(cells[key].mean)
        complete = all(v is not None for v in target_means)
        row.append(number(float(np.mean(target_means))) if complete else "-")
        body.append(row)
    return header, body


def fewshot_curves(table):
    """{panel: {method: [(shots, mean, std)]}} of the few-shot runs: per dataset, and the Average over the
    datasets a method has at every one of its shot counts (its std: of the per-seed averages)."""
    curves = {}
    for method, cells in sorted(table.items()):
        for (dataset, shots), cell in sorted(cells.items()):
            if cell.mean is not None:
                panel = curves.setdefault(dataset_label(dataset), {})
                panel.setdefault(method, []).append((shots, cell.mean, cell.std))
        shot_counts = sorted({shots for _, shots in cells})
        datasets = sorted({d for d, _ in cells})
        complete = [d for d in datasets if all(cells.get((d, k)) and cells[(d, k)].mean is not None
                                              for k in shot_counts)]
        for shots in shot_counts if complete else []:
            found = [cells[(d, shots)] for d in complete]
            common = set.intersection(*(set(c.values) for c in found))
            per_seed = [float(np.mean([c.values[s] for c in found])) for s in sorted(common)]
            curves.setdefault("Average", {}).setdefault(method, []).append(
                (shots, float(np.mean([c.mean for c in found])), float(np.std(per_seed)) if per_seed else 0.0))
    return curves


def fewshot_table(curves, table):
    """Per dataset and on average, each method's mean ± std at each shot count (cells marked as elsewhere)."""
    shots = sorted({k for panel in curves.values() for points in panel.values() for k, _, _ in points})
    header = ["Dataset", "Method"] + [f"{k} shots" for k in shots]
    cells = {(dataset_label(d), method, k): cell for method, found in table.items() for (d, k), cell in found.items()}
    body = []
    for panel, methods in curves.items():
        for method, points in methods.items():
            found = {k: cell_text(cells[(panel, method, k)]) if (panel, method, k) in cells else number(mean, std)
                     for k, mean, std in points}
            body.append([panel, method] + [found.get(k, "-") for k in shots])
    return header, body


def markdown(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def latex(header, body):
    def escape(text):
        return (str(text).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
                .replace(MIXED, r"$\neq$").replace(EXCEEDS, r"$^\dagger$"))
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


class ReportError(RuntimeError):
    """A report refused (--strict); the message says which cells and what to do."""


def runs(count):
    return f"{count} run" + ("" if count == 1 else "s")


def provenance_summary(cells):
    """Lines saying which code versions, weights, splits and configs the cells' runs come from (with the
    number of runs of each), and how many runs have no run.json."""
    counts = {part: {} for part in IDENTITY_PARTS}
    unknown = 0
    for cell in cells:
        for seed, record in cell.records.items():
            if record is None:
                unknown += 1
                continue
            weights = record.get("weights") or {}
            names = {"code": code_label(record.get("code")),
                     "weights": f"{short_backbone(weights.get('name') or backbone_of(record) or '?')} "
                                f"{(weights.get('sha256') or 'no file')[:12]}",
                     "split": ((record.get("split") or {}).get("sha256") or "none")[:12],
                     "config": config_digest(record)[:12]}
            for part, name in names.items():
                counts[part][name] = counts[part].get(name, 0) + 1
    lines = [f"- {part}: " + ", ".join(f"{name} ({runs(n)})" for name, n in sorted(found.items()))
             for part, found in counts.items() if found]
    if unknown:
        lines.append(f"- provenance unknown (no run.json, made before it existed): {runs(unknown)}")
    return lines


def mixed_notes(named_cells):
    """'<name>: seeds differ in <parts>' for each cell whose seeds' runs were made by different things."""
    notes = []
    for name, cell in named_cells:
        parts = cell.mixed()
        if parts:
            made = "; ".join(f"seed {seed}: " + ", ".join(value[:12] for value, part in zip(ident, IDENTITY_PARTS)
                                                         if part in parts)
                             for seed, ident in sorted(cell.identities().items()))
            notes.append(f"{name}: seeds differ in {', '.join(parts)} ({made})")
    return notes


def backbone_table(rows):
    """One method on several backbones side by side: its Average H (Base / New) per backbone."""
    averages = [row for row in rows if row["dataset"] == "Average" and row["source"] == "measured"]
    backbones = sorted({row["backbone"] for row in averages})
    labels = {row["method"]: row["method"].removesuffix(f" on {short_backbone(row['backbone'])}") for row in averages}
    # A method run on each backbone under its own config (a YAML naming the backbone) is one row: its
    # trainer's name, unless the trainer has several configs on one backbone (then one row per config).
    per_backbone = Counter((label.split(" (")[0], row["backbone"]) for row in averages
                           for label in [labels[row["method"]]])
    by_method = {}
    for row in averages:
        label = labels[row["method"]]
        trainer = label.split(" (")[0]
        single = all(count == 1 for (name, _), count in per_backbone.items() if name == trainer)
        by_method.setdefault(trainer if single else label, {})[row["backbone"]] = row
    header = ["Method"] + [short_backbone(b) for b in backbones]
    body = [[label] + [f"{number(found[b]['hm'], found[b]['hm_std'])} ({found[b]['base']:.2f} / {found[b]['new']:.2f})"
                       if b in found else "-" for b in backbones] for label, found in sorted(by_method.items())]
    return header, body


def transfer_panel(table, columns):
    """(target labels, {method: [mean per target]}) for the transfer figure (targets, not the source)."""
    targets = [(key, label) for key, label in columns if key != "imagenet"]
    names = [f"ImageNet{label}" if label.startswith("-") else label for _, label in targets]   # -V2: ImageNet-V2
    return names, {method: [cells[key].mean for key, _ in targets]
                                             for method, cells in sorted(table.items())}


TRANSFER = (("cross_dataset", "Cross-dataset transfer (source ImageNet)", "Cross-dataset targets",
             [("imagenet", "ImageNet")] + [(t, dataset_label(t)) for t in XD_TARGETS]),
            ("domain_generalization", "Domain generalisation (source ImageNet)", "Domain generalisation",
             [("imagenet", "ImageNet")] + [(t, label) for t, label in DG_TARGETS.items()]))


def build_report(root, trainers=None, seeds=(1, 2, 3), reference_path=REFERENCE_CSV, strict=False,
                 by_backbone=False):
    """{file name: content} of the whole report, and the Markdown text; ReportError under ``strict`` when
    a cell mixes runs made by different code, weights, splits or configs."""
    reference = read_reference(reference_path)
    base2new, problems = collect_base2new(root, seeds, trainers)
    rows, notes = base2new_rows(base2new, reference, reference_sources(reference_path))
    files, mixed = {}, []
    sections = ["# Results report", f"Seeds expected: {', '.join(map(str, seeds))}. Cells are mean ± std (population) "
                "over the seeds listed; `*` marks a cell with some seeds missing or unfinished, `≠` one whose seeds "
                "were made by different code, weights, splits or configs. H = 2BN/(B+N) from the averaged Base and "
                "New, ± the std of the per-seed H. Δ = measured minus CoCoOp (the `Δ vs` column says which CoCoOp); "
                "`†`: |Δ| exceeds the two methods' seed spread, std(method) + std(CoCoOp)."]
    if rows:   # a tree with unfinished runs only has no table (they are listed below)
        files["base2new.csv"] = csv_text(*base2new_csv_rows(rows))
        header, body = base2new_table(rows)
        files["base2new.tex"] = latex(header, body)
        files["base2new.png"] = figures.png(figures.base_vs_new(rows))
        files["base2new_h.png"] = figures.png(figures.harmonic_bars(rows))
        notes.append("[published] rows follow the measured row of the same method; their averages are over the "
                     "same datasets as the table (their own Average row when all 11 are there); a published "
                     "method without those datasets is left out. Sources: tools/reference_results.csv.")
        cells = [cell for method in base2new.values() for pair in method.values() for cell in pair]
        mixed += mixed_notes((f"{method} {dataset} {phase}", cell) for method, found in base2new.items()
                             for dataset, pair in found.items() for phase, cell in zip(("base", "new"), pair))
        sections += ["## Base-to-new generalisation", markdown(header, body), "\n".join(f"- {n}" for n in notes),
                     "Made by:\n" + "\n".join(provenance_summary(cells))]
        if by_backbone:
            sections += ["### Average H (Base / New) by backbone", markdown(*backbone_table(rows))]
    fewshot, fewshot_problems = collect_fewshot(root, seeds, trainers)
    problems += fewshot_problems
    curves = fewshot_curves(fewshot)
    if curves:
        header, body = fewshot_table(curves, fewshot)
        files["fewshot.csv"], files["fewshot.tex"] = csv_text(header, body), latex(header, body)
        files["fewshot.png"] = figures.png(figures.accuracy_vs_shots(curves))
        cells = [cell for found in fewshot.values() for cell in found.values()]
        mixed += mixed_notes((f"{method} {dataset} {shots} shots", cell) for method, found in fewshot.items()
                             for (dataset, shots), cell in found.items())
        sections += ["## Few-shot learning", markdown(header, body),
                     "Made by:\n" + "\n".join(provenance_summary(cells))]
    panels = {}
    for name, title, panel_title, columns in TRANSFER:
        targets = [key for key, _ in columns if key != "imagenet"]
        table, transfer_problems = collect_transfer(root, seeds, trainers, targets)
        problems += transfer_problems
        if table:
            header, body = transfer_table(table, columns)
            files[f"{name}.csv"] = csv_text(header, body)
            files[f"{name}.tex"] = latex(header, body)
            cells = [cell for found in table.values() for cell in found.values()]
            mixed += mixed_notes((f"{method} {key}", cell) for method, found in table.items()
                                 for key, cell in found.items())
            sections += [f"## {title}", markdown(header, body), "Made by:\n" + "\n".join(provenance_summary(cells))]
            panels[panel_title] = transfer_panel(table, columns)
    if panels:
        files["transfer.png"] = figures.png(figures.transfer(panels))
    if strict and mixed:
        raise ReportError(f"{len(mixed)} cells mix runs made by different code, weights, splits or configs "
                          f"(--strict): {mixed[0]}{' ...' if len(mixed) > 1 else ''}; rerun them with the scripts' "
                          "--rerun-stale, or report without --strict to see them marked")
    sections.append("## Cells that mix runs made by different things")
    sections.append("\n".join(f"- {m}" for m in mixed) if mixed else "None.")
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
    parser.add_argument("--strict", action="store_true",
                        help="refuse a cell whose seeds come from different code, weights, splits or configs")
    parser.add_argument("--by-backbone", action="store_true",
                        help="also a table of each method's average on each backbone, side by side")
    parser.add_argument("--out", help="report folder (default: ROOT/report)")
    args = parser.parse_args(argv)
    try:
        files, text = build_report(args.root, args.trainers, tuple(args.seeds), strict=args.strict,
                                   by_backbone=args.by_backbone)
    except ReportError as error:
        print(f"tools.report: error: {error}", file=sys.stderr)
        return 2
    out_dir = args.out or os.path.join(args.root, "report")
    for name, content in files.items():
        write_atomic(os.path.join(out_dir, name), content)
    print(text)
    print(f"Written to {out_dir}: {', '.join(sorted(files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
