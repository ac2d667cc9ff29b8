"""tools/report.py on a fixture output/ tree: every number checked against hand-computed values, the
provenance of each cell, and the figures' plotted points."""
import csv
import io
import json
import struct

import numpy as np
import pytest

from tools import figures, report


def result_block(accuracy, decimals):
    return (f"=> result\n* total: 1,000\n* correct: 900\n* accuracy: {accuracy:.{decimals}f}%\n"
            f"* error: {100 - accuracy:.{decimals}f}%\n* macro_f1: {accuracy:.{decimals}f}%\n")


def write_log(folder, accuracy, kind="train", end_line="Finish training", decimals=1, name="log.txt",
              backbone="ViT-B/16"):
    """kind: train (finished), eval (--eval-only), unfinished (training stopped after a val result);
    backbone: the config block train.py prints, with MODEL.BACKBONE.NAME."""
    folder.mkdir(parents=True, exist_ok=True)
    config = f"MODEL:\n  BACKBONE:\n    CACHE_DIR: \n    NAME: {backbone}\n  HEAD:\n    NAME: \nOPTIM:\n" \
        if backbone else ""
    if kind == "eval":
        text = config + "eval_only: True\nEvaluate on the *test* set\n" + result_block(accuracy, decimals)
    else:
        text = config + "eval_only: False\nepoch [1/10] batch [1/1] loss 1.0\nEvaluate on the *val* set\n" \
            + result_block(12.0, decimals)
        if kind == "train":
            text += f"{end_line}\nEvaluate on the *test* set\n" + result_block(accuracy, decimals)
    (folder / name).write_text(text)


def b2n(root, phase, dataset, trainer, cfg, seed):
    return root / "base2new" / phase / dataset / "shots_16" / trainer / cfg / f"seed{seed}"


MUPL, COCOOP, ZS = "MuPL (cfg_m)", "CoCoOp (cfg_c)", "ZeroshotCLIP (vit_b16)"
SOURCES = report.reference_sources()


@pytest.fixture
def output_tree(tmp_path):
    root = tmp_path / "output"
    for seed, (base, new) in enumerate([(95.0, 97.5), (96.0, 98.1), (94.0, 97.9)], start=1):
        if seed == 2:  # interrupted, then resumed: the result is in the second log
            write_log(b2n(root, "train_base", "oxford_pets", "MuPL", "cfg_m", seed), 0.0, "unfinished")
            write_log(b2n(root, "train_base", "oxford_pets", "MuPL", "cfg_m", seed), base,
                      name="log.txt-2026-11-24-10-00-00")
        else:
            write_log(b2n(root, "train_base", "oxford_pets", "MuPL", "cfg_m", seed), base)
        write_log(b2n(root, "test_new", "oxford_pets", "MuPL", "cfg_m", seed), new, "eval")
    for seed, (base, new) in enumerate([(80.0, 60.0), (82.0, 58.0)], start=1):
        write_log(b2n(root, "train_base", "dtd", "MuPL", "cfg_m", seed), base)
        write_log(b2n(root, "test_new", "dtd", "MuPL", "cfg_m", seed), new, "eval")
    write_log(b2n(root, "train_base", "dtd", "MuPL", "cfg_m", 3), 0.0, "unfinished")
    # A run moved aside by the scripts' --force is not a seed.
    write_log(b2n(root, "test_new", "dtd", "MuPL", "cfg_m", "1.old-2026-11-24-09-00-00"), 1.0, "eval")
    # CoCoOp from a CoOp-family repo: old end line, 2 decimals.
    for seed, (base, new) in enumerate([(95.25, 97.50), (94.75, 97.75), (95.50, 97.00)], start=1):
        write_log(b2n(root, "train_base", "oxford_pets", "CoCoOp", "cfg_c", seed), base,
                  end_line="Finished training", decimals=2)
        write_log(b2n(root, "test_new", "oxford_pets", "CoCoOp", "cfg_c", seed), new, "eval", decimals=2)
    for seed in (1, 2, 3):
        write_log(b2n(root, "train_base", "oxford_pets", "ZeroshotCLIP", "vit_b16", seed), 91.2, "eval")
        write_log(b2n(root, "test_new", "oxford_pets", "ZeroshotCLIP", "vit_b16", seed), 97.3, "eval")
        write_log(root / "imagenet" / "MuPL" / "cfg_m_16shots" / f"seed{seed}", 70.0 + seed)
        write_log(root / "evaluation" / "MuPL" / "cfg_m_16shots" / "caltech101" / f"seed{seed}", 92.0 + seed, "eval")
    write_log(root / "evaluation" / "MuPL" / "cfg_m_16shots" / "imagenetv2" / "seed1", 64.0, "eval")
    return root


def hm(base, new):
    return 2 * base * new / (base + new)


def expected_rows():
    """(dataset, method) -> (base, new, H, ΔBase, ΔNew, ΔH, Δ vs), all computed by hand."""
    mupl_pets = (95.0, (97.5 + 98.1 + 97.9) / 3)
    mupl_dtd = (81.0, 59.0)
    cocoop_pets = ((95.25 + 94.75 + 95.50) / 3, (97.50 + 97.75 + 97.00) / 3)
    zs_pets = (91.2, 97.3)
    paper_cocoop = {"OxfordPets": (95.20, 97.69, 96.43), "DescribableTextures": (77.01, 56.00, 64.85)}
    mupl_avg = ((95.0 + 81.0) / 2, (mupl_pets[1] + 59.0) / 2)
    paper_avg = ((95.20 + 77.01) / 2, (97.69 + 56.00) / 2)
    paper_avg = (*paper_avg, hm(*paper_avg))

    def with_delta(values, ref, source):
        row = (*values, hm(*values))
        return (*row, row[0] - ref[0], row[1] - ref[1], row[2] - ref[2], source)

    measured_ref = (*cocoop_pets, hm(*cocoop_pets))
    return {
        ("OxfordPets", MUPL): with_delta(mupl_pets, measured_ref, f"measured {COCOOP}"),
        ("OxfordPets", COCOOP): with_delta(cocoop_pets, measured_ref, f"measured {COCOOP}"),
        ("OxfordPets", ZS): with_delta(zs_pets, measured_ref, f"measured {COCOOP}"),
        ("DescribableTextures", MUPL): with_delta(mupl_dtd, paper_cocoop["DescribableTextures"],
                                                  "published CoCoOp"),
        ("Average", MUPL): with_delta(mupl_avg, paper_avg, "published CoCoOp"),
        ("Average", COCOOP): with_delta(cocoop_pets, measured_ref, f"measured {COCOOP}"),
        ("OxfordPets", "CoCoOp [published]"): paper_cocoop["OxfordPets"],
        ("OxfordPets", "MaPLe [published]"): (95.43, 97.76, 96.58),
        ("DescribableTextures", "CoOp [published]"): (79.44, 41.18, 54.24),
        ("Average", "CoCoOp [published]"): paper_avg,
    }


def csv_rows(text):
    return {(row["dataset"], row["method"]): row for row in csv.DictReader(io.StringIO(text))}


def test_base2new_numbers_in_csv_and_markdown(output_tree):
    files, text = report.build_report(str(output_tree))
    rows = csv_rows(files["base2new.csv"])
    for (dataset, method), values in expected_rows().items():
        row = rows[(dataset, method)]
        got = [row[k] for k in ("base", "new", "hm", "d_base", "d_new", "d_hm")]
        for cell, value in zip(got, values[:6]):
            assert float(cell) == pytest.approx(value, abs=1e-4), (dataset, method, cell, value)
        mark = "" if row["all_seeds"] == "True" else " *"
        if len(values) == 7:   # mean ± std, the seeds used, Δ marked † where it exceeds the seed spread
            assert row["d_vs"] == values[6] and row["source"] == "measured"
            cells = [dataset, method + mark, "ViT-B/16", row["seeds"]] + [
                f"{v:.2f} ± {float(row[k + '_std']):.2f}" for v, k in zip(values[:3], ("base", "new", "hm"))]
            cells += [f"{v:+.2f}" + (" †" if row[f"d_{k}_exceeds_spread"] == "True" else "")
                      for v, k in zip(values[3:6], ("base", "new", "hm"))] + [values[6], "measured"]
        else:  # published rows carry no delta nor spread, and name their source
            assert got[3:] == ["", "", ""] and row["source"] == SOURCES[method.split(" [")[0]]
            cells = [dataset, method, "", ""] + [f"{v:.2f}" for v in values[:3]] + ["-", "-", "-", "", row["source"]]
        assert "| " + " | ".join(cells) + " |" in text
    # Each measured method is followed by its published numbers (zero-shot CLIP's trainer is ZeroshotCLIP).
    pets = [method for dataset, method in rows if dataset == "OxfordPets"]
    assert pets.index("CoCoOp [published]") == pets.index(COCOOP) + 1
    assert pets.index("CLIP [published]") == pets.index(ZS) + 1
    assert all(source for source in SOURCES.values())
    # The published MuPL row exists only as an 11-dataset average, so it is not compared on 2 datasets.
    assert not any(method.startswith("MuPL-paper") for _, method in rows)
    assert rows[("DescribableTextures", MUPL)]["all_seeds"] == "False"
    assert rows[("OxfordPets", MUPL)]["all_seeds"] == "True"
    assert f"| DescribableTextures | {MUPL} * | ViT-B/16 | 1,2 | 81.00 ± 1.00 |" in text
    assert rows[("OxfordPets", MUPL)]["base_std"] == str(round((2 / 3) ** 0.5, 4))
    assert "Average of MuPL (cfg_m) over 2/11: OxfordPets, DescribableTextures datasets." in text
    assert "- MuPL (cfg_m) dtd train_base: seed 3 unfinished" in text
    assert "- MuPL (cfg_m) dtd test_new: seed 3 missing" in text


def test_std_over_seeds_and_published_reference_without_cocoop(output_tree):
    files, text = report.build_report(str(output_tree), trainers=["MuPL"])
    assert f"| OxfordPets | {MUPL} | ViT-B/16 | 1,2,3 | 95.00 ± {(2 / 3) ** 0.5:.2f} |" in text
    assert r"95.00 $\pm$ 0.82" in files["base2new.tex"]
    methods = {method for _, method in csv_rows(files["base2new.csv"])}
    assert MUPL in methods and not any(m.startswith(("CoCoOp (", "Zeroshot")) for m in methods)
    # Without the measured CoCoOp the deltas are taken to the published CoCoOp.
    assert csv_rows(files["base2new.csv"])[("OxfordPets", MUPL)]["d_vs"] == "published CoCoOp"


def test_transfer_tables_and_their_missing_runs(output_tree):
    files, text = report.build_report(str(output_tree))
    xd = list(csv.reader(io.StringIO(files["cross_dataset.csv"])))
    assert xd[0][:5] == ["Method", "Backbone", "Seeds", "ImageNet", "Caltech101"]
    assert xd[0][-1] == "Average (targets)"
    assert xd[1][:5] == [MUPL, "ViT-B/16", "1,2,3", f"72.00 ± {(2 / 3) ** 0.5:.2f}", f"94.00 ± {(2 / 3) ** 0.5:.2f}"]
    assert xd[1][-1] == "-"  # 9 targets not run: no average over targets
    dg = list(csv.reader(io.StringIO(files["domain_generalization.csv"])))
    assert dg[0] == ["Method", "Backbone", "Seeds", "ImageNet", "-V2", "-Sketch", "-A", "-R", "Average (targets)"]
    assert dg[1][3:5] == [f"72.00 ± {(2 / 3) ** 0.5:.2f}", "64.00 *"]
    assert "- MuPL (cfg_m) evaluation imagenetv2: seed 2 missing" in text
    assert "- MuPL (cfg_m) evaluation dtd: seed 1 missing" in text
    assert r"\begin{tabular}" in files["cross_dataset.tex"] and r"-V2" in files["domain_generalization.tex"]


def test_cli_writes_every_file_atomically_and_a_valid_png(output_tree, tmp_path, capsys):
    out_dir = tmp_path / "report"
    report.main([str(output_tree), "--out", str(out_dir)])
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(["report.md", "base2new.csv", "base2new.tex", "base2new.png", "base2new_h.png",
                            "cross_dataset.csv", "cross_dataset.tex", "domain_generalization.csv",
                            "domain_generalization.tex", "transfer.png"])
    assert "## Base-to-new generalisation" in capsys.readouterr().out
    png = (out_dir / "base2new.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert 800 <= width <= 3000 and 300 <= height <= 2000
    assert len(png) > 5000


def test_published_average_row_used_when_all_eleven_present(tmp_path):
    reference = report.read_reference()
    labels = list(report.BASE2NEW_DATASETS.values())
    assert report.average_published(reference["MuPL-paper-derived"], labels) == (83.22, 76.48, 79.71)
    assert report.average_published(reference["CoCoOp"], labels) == (80.47, 71.69, 75.83)


def test_every_published_method_sits_next_to_the_trainer_that_measures_it():
    import plugins
    from dassl.engine import TRAINER_REGISTRY

    plugins.import_plugins()
    trainers = set(TRAINER_REGISTRY.registered_names())
    for name in report.read_reference():
        assert report.trainer_of_published(name) in trainers, name


def test_a_tree_of_unfinished_runs_only_reports_them_without_a_table(tmp_path):
    """What a sweep stopped during its first training leaves: no table, no figure, the run listed."""
    write_log(b2n(tmp_path, "train_base", "oxford_pets", "MuPL", "cfg_m", 1), 0.0, "unfinished")
    files, text = report.build_report(str(tmp_path), seeds=(1,))
    assert set(files) == {"report.md"}
    assert "- MuPL (cfg_m) oxford_pets train_base: seed 1 unfinished" in text


def write_record(folder, code="a" * 40, weights="w1", split="s1", lr=0.002, backbone="ViT-B/16"):
    """A run.json as train.py writes it, with the parts the report compares."""
    record = {"run_id": str(folder), "code": {"git_commit": code, "dirty": False},
              "request": {"MODEL.BACKBONE.NAME": backbone}, "backbone": backbone,
              "weights": {"name": backbone, "sha256": weights}, "split": {"sha256": split},
              "config": {"SEED": int(folder.name[4:]), "OUTPUT_DIR": str(folder), "OPTIM": {"LR": lr}}}
    (folder / "run.json").write_text(json.dumps(record))


def test_delta_is_marked_where_it_exceeds_the_two_methods_seed_spread(output_tree):
    files, text = report.build_report(str(output_tree))
    rows = csv_rows(files["base2new.csv"])
    exceeds = {key: {k: rows[key][f"d_{k}_exceeds_spread"] for k in ("base", "new", "hm")}
               for key in (("OxfordPets", ZS), ("OxfordPets", MUPL), ("OxfordPets", COCOOP),
                           ("DescribableTextures", MUPL))}
    # ZS base: |91.20 - 95.17| = 3.97 > 0 + 0.31; new: |97.30 - 97.42| = 0.12 < 0.31 (CoCoOp's new std).
    assert exceeds[("OxfordPets", ZS)]["base"] == "True" and exceeds[("OxfordPets", ZS)]["new"] == "False"
    # MuPL base: |95.00 - 95.17| = 0.17 < 0.82 + 0.31.
    assert exceeds[("OxfordPets", MUPL)]["base"] == "False"
    assert set(exceeds[("OxfordPets", COCOOP)].values()) == {"False"}
    # Against the published CoCoOp (no spread): DTD base 81.00 - 77.01 = 3.99 > 1.00, MuPL's own std.
    assert exceeds[("DescribableTextures", MUPL)]["base"] == "True"
    assert f"| OxfordPets | {ZS} | ViT-B/16 | 1,2,3 | 91.20 ± 0.00 | 97.30 ± 0.00 |" in text
    assert "| -3.97 † | -0.12 |" in text
    assert rows[("OxfordPets", MUPL)]["hm_std"] == str(round(float(np.std(
        [hm(95.0, 97.5), hm(96.0, 98.1), hm(94.0, 97.9)])), 4))


def test_cells_mixing_code_weights_split_or_config_are_marked_listed_and_refused_under_strict(
        output_tree, tmp_path, capsys):
    for seed in (1, 2, 3):
        write_record(b2n(output_tree, "train_base", "oxford_pets", "MuPL", "cfg_m", seed),
                     lr=0.01 if seed == 3 else 0.002)
        write_record(b2n(output_tree, "test_new", "oxford_pets", "MuPL", "cfg_m", seed), weights=f"w{seed % 2}")
        write_record(b2n(output_tree, "train_base", "oxford_pets", "CoCoOp", "cfg_c", seed))
    for seed in (1, 2):
        write_record(b2n(output_tree, "train_base", "dtd", "MuPL", "cfg_m", seed), split=f"s{seed}",
                     code="b" * 40)
    files, text = report.build_report(str(output_tree))
    mixed = text.split("## Cells that mix runs made by different things")[1].split("##")[0]
    assert "- MuPL (cfg_m) oxford_pets base: seeds differ in config" in mixed
    assert "- MuPL (cfg_m) oxford_pets new: seeds differ in weights (seed 1: w1; seed 2: w0; seed 3: w1)" in mixed
    assert "- MuPL (cfg_m) dtd base: seeds differ in split (seed 1: s1; seed 2: s2)" in mixed
    assert mixed.count("\n- ") == 3     # CoCoOp's seeds all agree; runs without run.json are not "mixed"
    assert f"| OxfordPets | {MUPL} ≠ |" in text and f"| OxfordPets | {COCOOP} |" in text
    assert rows_of(files)[("OxfordPets", MUPL)]["mixed"] == "config weights"
    made_by = text.split("Made by:")[1].split("##")[0]
    assert "- code: aaaaaaaaaa (9 runs), bbbbbbbbbb (2 runs)" in made_by
    assert "- weights: ViT-B/16 w0 (1 run), ViT-B/16 w1 (10 runs)" in made_by
    assert "- provenance unknown (no run.json, made before it existed): 11 runs" in made_by   # ZS, CoCoOp new...
    assert report.main([str(output_tree), "--strict", "--out", str(tmp_path / "report")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("tools.report: error: 3 cells mix runs") and error.count("\n") == 1
    assert not (tmp_path / "report").exists()


def rows_of(files):
    return csv_rows(files["base2new.csv"])


def test_runs_on_different_backbones_are_never_one_cell_and_sit_side_by_side(tmp_path):
    """Seeds 1-2 made before run.json (the backbone read from the config their log prints), seed 3 with
    run.json on an open_clip backbone: two rows, one per backbone, and the --by-backbone table."""
    laion = "ViT-B-16/laion2b_s34b_b88k"
    for seed, (base, new) in enumerate([(90.0, 80.0), (92.0, 82.0), (95.0, 85.0)], start=1):
        backbone = laion if seed == 3 else "ViT-B/16"
        train, test = (b2n(tmp_path, phase, "oxford_pets", "CoCoOp", "cfg_c", seed)
                       for phase in ("train_base", "test_new"))
        write_log(train, base, backbone=backbone)
        write_log(test, new, "eval", backbone=backbone)
        if seed == 3:
            write_record(train, backbone=laion)
            write_record(test, backbone=laion)
    files, text = report.build_report(str(tmp_path), by_backbone=True)
    rows = rows_of(files)
    old, new = rows[("OxfordPets", "CoCoOp (cfg_c) on ViT-B/16")], rows[("OxfordPets", f"CoCoOp (cfg_c) on {laion}")]
    assert (old["backbone"], old["seeds"], old["base"], old["all_seeds"]) == ("ViT-B/16", "1,2", "91.0", "False")
    assert (new["backbone"], new["seeds"], new["base"], new["new"]) == (laion, "3", "95.0", "85.0")
    table = text.split("### Average H (Base / New) by backbone")[1]
    assert f"| Method | {laion} | ViT-B/16 |" in table
    assert (f"| CoCoOp | {hm(95.0, 85.0):.2f} (95.00 / 85.00) | {hm(91.0, 81.0):.2f} ± 1.00 "
            "(91.00 / 81.00) |") in table


def test_a_method_run_on_each_backbone_under_its_own_config_is_one_row_side_by_side(tmp_path):
    """The usual way to try a stronger CLIP: a config per backbone (its own run folders), one row per
    trainer in the --by-backbone table; a trainer with two configs on one backbone keeps a row per config."""
    laion = "ViT-B-16/laion2b_s34b_b88k"
    runs = [("CoCoOp", "cfg_c", "ViT-B/16", 90.0), ("CoCoOp", "cfg_c_laion", laion, 94.0),
            ("MuPL", "cfg_m", "ViT-B/16", 91.0), ("MuPL", "cfg_m2", "ViT-B/16", 92.0)]
    for trainer, cfg, backbone, base in runs:
        for seed in (1, 2, 3):
            for phase, value in (("train_base", base), ("test_new", base - 10)):
                folder = b2n(tmp_path, phase, "oxford_pets", trainer, cfg, seed)
                write_log(folder, value, "eval" if phase == "test_new" else "train", backbone=backbone)
                write_record(folder, backbone=backbone)
    _, text = report.build_report(str(tmp_path), by_backbone=True)
    table = text.split("### Average H (Base / New) by backbone")[1].split("\n\n## ")[0]
    assert f"| Method | {laion} | ViT-B/16 |" in table
    assert (f"| CoCoOp | {hm(94.0, 84.0):.2f} ± 0.00 (94.00 / 84.00) | {hm(90.0, 80.0):.2f} ± 0.00 "
            "(90.00 / 80.00) |") in table
    assert "| MuPL (cfg_m) | - |" in table and "| MuPL (cfg_m2) | - |" in table


@pytest.fixture
def fewshot_tree(output_tree):
    """Few-shot runs of two methods on two datasets at 1, 2 and 4 shots, seeds 1 and 2."""
    accuracy = {("CoOp", "oxford_pets"): [80.0, 84.0, 88.0], ("CoOp", "dtd"): [40.0, 46.0, 52.0],
                ("MuPL", "oxford_pets"): [83.0, 86.0, 90.0], ("MuPL", "dtd"): [44.0, 50.0, 55.0]}
    for (trainer, dataset), values in accuracy.items():
        for shots, value in zip((1, 2, 4), values):
            for seed, offset in ((1, -1.0), (2, 1.0)):
                folder = output_tree / "fewshot" / dataset / f"shots_{shots}" / trainer / "cfg" / f"seed{seed}"
                write_log(folder, value + offset)
    return output_tree, accuracy


def scatter_points(axis):
    return sorted(tuple(point) for collection in axis.collections for point in collection.get_offsets())


def test_figures_plot_the_reports_numbers(fewshot_tree):
    root, accuracy = fewshot_tree
    table, _ = report.collect_base2new(str(root), (1, 2, 3), None)
    rows, _ = report.base2new_rows(table, report.read_reference())
    measured = [row for row in rows if row["source"] == "measured"]

    fig = figures.base_vs_new(rows)
    panels = {axis.get_title(): axis for axis in fig.axes if axis.get_visible()}
    assert list(panels) == ["OxfordPets", "DescribableTextures", "Average"]
    for title, axis in panels.items():
        expected = sorted((row["base"], row["new"]) for row in measured if row["dataset"] == title)
        assert np.allclose(scatter_points(axis), expected)
        curves = [line for line in axis.get_lines() if (line.get_gid() or "").startswith("iso-H")]
        assert curves
        for line in curves:
            base, new = line.get_xdata(), line.get_ydata()
            assert np.allclose(2 * base * new / (base + new), float(line.get_gid().split()[-1]))
    assert {text.get_text() for text in panels["OxfordPets"].texts} >= {f"{row['hm']:.1f}" for row in measured
                                                                        if row["dataset"] == "OxfordPets"}

    # The legend names each method by its trainer alone: configs show only where a trainer has several.
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["CoCoOp", "MuPL", "ZeroshotCLIP"]

    fig = figures.harmonic_bars(rows)
    panels = {axis.get_title(): axis for axis in fig.axes}
    assert list(panels) == ["OxfordPets", "DescribableTextures", "Average"]
    for title, axis in panels.items():
        dots = {container.get_label(): container for container in axis.containers}
        for row in (row for row in measured if row["dataset"] == title):
            dot = dots[row["method"]]
            assert list(dot.lines[0].get_xdata()) == pytest.approx([row["hm"]])
            (segment,) = dot.lines[2][0].get_segments()
            assert segment[1][0] - segment[0][0] == pytest.approx(2 * row["hm_std"])
            # a method keeps its row in every panel, named on the first panel's axis
            row_of = ["CoCoOp", "MuPL", "ZeroshotCLIP"].index(row["method"].split(" (")[0])
            assert list(dot.lines[0].get_ydata()) == [row_of]
    assert [label.get_text() for label in panels["OxfordPets"].get_yticklabels()] == ["CoCoOp", "MuPL",
                                                                                       "ZeroshotCLIP"]

    curves = report.fewshot_curves(report.collect_fewshot(str(root), (1, 2), None)[0])
    fig = figures.accuracy_vs_shots(curves)
    lines = {(axis.get_title(), container.get_label()): container.lines[0] for axis in fig.axes
             for container in axis.containers}
    assert list(lines[("OxfordPets", "CoOp (cfg)")].get_xdata()) == [1, 2, 4]
    assert list(lines[("OxfordPets", "CoOp (cfg)")].get_ydata()) == accuracy[("CoOp", "oxford_pets")]
    average = [(a + b) / 2 for a, b in zip(accuracy[("MuPL", "oxford_pets")], accuracy[("MuPL", "dtd")])]
    assert list(lines[("Average", "MuPL (cfg)")].get_ydata()) == pytest.approx(average)

    fig = figures.transfer({"Cross-dataset targets": (["Caltech101", "OxfordPets"], {MUPL: [94.0, None]})})
    cells = fig.axes[0].images[0].get_array()
    assert cells[0, 0] == 94.0 and cells.mask.tolist() == [[False, True]]
    assert [t.get_text() for t in fig.axes[0].texts] == ["94.0", "-"]


def test_method_labels_drop_the_details_all_methods_share():
    labels, common = figures.short_labels(["CoOp (c1, shots_4)", "CoOp (c2, shots_4)", "MuPL (m, shots_4)",
                                           "IVLP (v) on ViT-L/14"])
    assert labels == {"CoOp (c1, shots_4)": "CoOp (c1)", "CoOp (c2, shots_4)": "CoOp (c2)",
                      "MuPL (m, shots_4)": "MuPL", "IVLP (v) on ViT-L/14": "IVLP on ViT-L/14"}
    assert common == ""
    labels, common = figures.short_labels(["CoOp (c1, shots_4)", "MuPL (m, shots_4)"])
    assert labels == {"CoOp (c1, shots_4)": "CoOp", "MuPL (m, shots_4)": "MuPL"} and common == "shots_4"


def test_report_writes_the_fewshot_table_and_figure(fewshot_tree, tmp_path):
    root, accuracy = fewshot_tree
    assert report.main([str(root), "--seeds", "1", "2", "--out", str(tmp_path / "report")]) == 0
    table = list(csv.reader(io.StringIO((tmp_path / "report" / "fewshot.csv").read_text())))
    assert table[0] == ["Dataset", "Method", "1 shots", "2 shots", "4 shots"]
    assert ["OxfordPets", "CoOp (cfg)", "80.00 ± 1.00", "84.00 ± 1.00", "88.00 ± 1.00"] in table
    assert ["Average", "CoOp (cfg)", "60.00 ± 1.00", "65.00 ± 1.00", "70.00 ± 1.00"] in table
    for name in ("fewshot.png", "base2new.png", "base2new_h.png", "transfer.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
