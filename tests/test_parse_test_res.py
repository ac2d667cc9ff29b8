"""parse_test_res.py against CoOp's algorithm on fixture logs in the real printed format."""
import re

import numpy as np
import pytest

import parse_test_res


def result_block(accuracy, decimals=1):
    return (
        "=> result\n* total: 1,881\n* correct: 1,796\n"
        f"* accuracy: {accuracy:.{decimals}f}%\n* error: {100 - accuracy:.{decimals}f}%\n"
        f"* macro_f1: {accuracy - 0.3:.{decimals}f}%\n"
    )


def training_log(final_accuracy, end_line="Finish training", val_accuracy=50.0, decimals=1):
    """A training log: arguments, epochs with a val result on the way, the end line, the final test."""
    return (
        "eval_only: False\nepoch [1/10] batch [20/20] loss 1.2\nEvaluate on the *val* set\n"
        + result_block(val_accuracy)
        + "epoch [10/10] batch [20/20] loss 0.3\n"
        + f"{end_line}\nDeploy the last-epoch model\nEvaluate on the *test* set\n"
        + result_block(final_accuracy, decimals)
        + "Elapsed: 0:01:02\n"
    )


def eval_only_log(accuracy):
    return "eval_only: True\nLoading weights\nEvaluate on the *test* set\n" + result_block(accuracy)


def coop_parse(directory, end_signal, keyword="accuracy"):
    """CoOp's parse_test_res.py algorithm, written out: start after the end signal, last match wins."""
    pattern = re.compile(r"\* " + keyword + r": ([\.\deE+-]+)%")
    values = []
    for seed_dir in sorted(p for p in directory.iterdir() if not p.name.startswith(".")):
        good_to_go, value = False, None
        for line in (seed_dir / "log.txt").read_text().splitlines():
            if line.strip() == end_signal:
                good_to_go = True
            match = pattern.search(line)
            if match and good_to_go:
                value = float(match.group(1))
        if value is not None:
            values.append(value)
    return float(np.mean(values)), float(np.std(values))


def write_seeds(root, logs):
    for seed, text in enumerate(logs, start=1):
        (root / f"seed{seed}").mkdir(parents=True)
        (root / f"seed{seed}" / "log.txt").write_text(text)


def test_training_logs_match_coop(tmp_path, capsys):
    write_seeds(tmp_path, [training_log(95.5), training_log(94.1), training_log(96.3)])
    mean, std = parse_test_res.parse_experiment(str(tmp_path))
    coop_mean, coop_std = coop_parse(tmp_path, "Finish training")
    assert (mean, std) == pytest.approx((coop_mean, coop_std))
    assert mean == pytest.approx((95.5 + 94.1 + 96.3) / 3)
    out = capsys.readouterr().out
    assert f"* accuracy: {coop_mean:.2f}% +- {coop_std:.2f}%" in out
    assert out.count("file: ") == 3


def test_old_end_line_is_read_like_coop_reads_its_own(tmp_path):
    write_seeds(tmp_path, [training_log(81.25, "Finished training", decimals=2),
                           training_log(79.75, "Finished training", decimals=2)])
    mean, std = parse_test_res.parse_experiment(str(tmp_path))
    assert (mean, std) == pytest.approx(coop_parse(tmp_path, "Finished training"))
    assert mean == pytest.approx(80.5) and std == pytest.approx(0.75)


def test_val_result_of_unfinished_run_is_not_counted(tmp_path, capsys):
    unfinished = training_log(90.0).split("Finish training")[0]
    write_seeds(tmp_path, [training_log(70.0), unfinished])
    mean, std = parse_test_res.parse_experiment(str(tmp_path))
    assert (mean, std) == (70.0, 0.0)
    assert parse_test_res.read_result(str(tmp_path / "seed2" / "log.txt")) is None
    assert capsys.readouterr().out.count("file: ") == 1


def test_test_logs_match_coop_and_ci95(tmp_path, capsys):
    write_seeds(tmp_path, [eval_only_log(71.2), eval_only_log(73.0), eval_only_log(72.1)])
    coop_mean, coop_std = coop_parse(tmp_path, "=> result")
    mean, spread = parse_test_res.parse_experiment(str(tmp_path), test_log=True, ci95=True)
    assert mean == pytest.approx(coop_mean)
    assert spread == pytest.approx(1.96 * coop_std / np.sqrt(3))
    # Without --test-log an eval-only run still counts: it never trains, so it has no end line.
    assert parse_test_res.parse_experiment(str(tmp_path))[0] == pytest.approx(coop_mean)
    crashed = tmp_path / "seed4"
    crashed.mkdir()
    (crashed / "log.txt").write_text("eval_only: True\nLoading weights\nTraceback (most recent call last):\n")
    assert parse_test_res.read_result(str(crashed / "log.txt")) is None
    assert parse_test_res.read_result(str(crashed / "log.txt"), test_log=True) is None
    # A training run stopped before its first epoch line, with a result block, is still a training run.
    (crashed / "log.txt").write_text("eval_only: False\nEvaluate on the *val* set\n" + result_block(40.0))
    assert parse_test_res.read_result(str(crashed / "log.txt")) is None
    # Without printed arguments (another repository's log), a log that never trained is an evaluation.
    (crashed / "log.txt").write_text("Evaluate on the *test* set\n" + result_block(40.0))
    assert parse_test_res.read_result(str(crashed / "log.txt")) == 40.0


def test_resumed_run_counts_and_moved_aside_run_does_not(tmp_path, capsys):
    write_seeds(tmp_path, [training_log(60.0), training_log(90.0).split("Finish training")[0]])
    (tmp_path / "seed2" / "log.txt-2026-11-24-10-00-00").write_text(training_log(64.0))
    (tmp_path / "seed1.old-2026-11-24-09-00-00").mkdir()
    (tmp_path / "seed1.old-2026-11-24-09-00-00" / "log.txt").write_text(training_log(10.0))
    assert parse_test_res.parse_experiment(str(tmp_path)) == (62.0, 2.0)
    assert "log.txt-2026-11-24-10-00-00. accuracy: 64.00%" in capsys.readouterr().out


def test_keyword_and_multi_exp_and_nothing_found(tmp_path, capsys):
    write_seeds(tmp_path / "exp_a", [training_log(60.0), training_log(62.0)])
    write_seeds(tmp_path / "exp_b", [training_log(80.0)])
    (tmp_path / "exp_c" / "seed1").mkdir(parents=True)
    parse_test_res.main([str(tmp_path), "--multi-exp", "--keyword", "macro_f1"])
    out = capsys.readouterr().out
    assert "* macro_f1: 60.70% +- 1.00%" in out
    assert "* macro_f1: 79.70% +- 0.00%" in out
    assert f"Nothing found in {tmp_path / 'exp_c'}" in out
    assert "Average over 2 experiments: macro_f1: 70.20%" in out
