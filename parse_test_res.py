"""Average the test results of the seed folders of one experiment (CoOp's command line and output).

Reads logs of this project and of CoOp-family repositories: the training end line is ``Finish training``
(Dassl >= 0.6.1) or ``Finished training`` (older logs, MaPLe/PromptSRC), so neither reports "Nothing
found" on the other's logs. An ``--eval-only`` run (no training at all) counts from its ``=> result``.
A resumed run's result is in the ``log.txt-<time>`` written beside ``log.txt``: the newest log with a
result counts. Folders moved aside by the scripts' ``--force`` (``seed1.old-<time>``) are skipped.

usage: python parse_test_res.py output/.../CoCoOp/vit_b16_c4_ep10_batch1_ctxv1 [--test-log] [--ci95]
       python parse_test_res.py output/.../CoCoOp --multi-exp
"""
import argparse
import os
import re

import numpy as np

TRAINING_END = re.compile(r"^Finish(ed)? training$")
RESULT_START = "=> result"
EVAL_ONLY_ARG = "eval_only: True"


def _is_eval_only(lines):
    """Trust the printed ``eval_only:`` argument; logs without it are eval-only when they never trained."""
    for line in lines:
        if line.startswith("eval_only: "):
            return line == EVAL_ONLY_ARG
    return not any(line.startswith("epoch [") for line in lines)


def _start_of_final_results(lines, test_log):
    """Index of the line after which the final results are printed, or None when the run is unfinished."""
    if test_log:
        return lines.index(RESULT_START) if RESULT_START in lines else None
    for index, line in enumerate(lines):
        if TRAINING_END.match(line):
            return index
    if RESULT_START in lines and _is_eval_only(lines):
        return lines.index(RESULT_START)
    return None


def read_result(log_path, keyword="accuracy", test_log=False):
    """The final ``* <keyword>: X%`` of a log (last match after the end signal), or None when unfinished."""
    if not os.path.isfile(log_path):
        return None
    with open(log_path, encoding="utf-8", errors="replace") as log_file:
        lines = [line.strip() for line in log_file]
    start = _start_of_final_results(lines, test_log)
    if start is None:
        return None
    pattern = re.compile(r"\* " + re.escape(keyword) + r": ([\.\deE+-]+)%")
    value = None
    for line in lines[start:]:
        match = pattern.search(line)
        if match:
            value = float(match.group(1))
    return value


def run_logs(folder):
    """log.txt and the log.txt-<time> files a resumed run writes beside it, oldest first."""
    if not os.path.isdir(folder):
        return []
    names = sorted(name for name in os.listdir(folder) if name == "log.txt" or name.startswith("log.txt-"))
    return [os.path.join(folder, name) for name in names]


def read_run_result(folder, keyword="accuracy", test_log=False):
    """(result, log path) of a run folder from its newest log that has one, or (None, None) when unfinished."""
    for log_path in reversed(run_logs(folder)):
        value = read_result(log_path, keyword, test_log)
        if value is not None:
            return value, log_path
    return None, None


def summarise(values, ci95=False):
    """Mean and spread: population std (np.std, as CoOp), or the 95% confidence half-width."""
    values = np.asarray(values, dtype=float)
    spread = float(np.std(values))
    if ci95:
        spread = 1.96 * spread / np.sqrt(len(values))
    return float(np.mean(values)), spread


def experiment_folders(directory):
    """Sorted non-hidden subfolders, leaving out runs the scripts' --force moved aside (``*.old-<time>``)."""
    names = sorted(os.listdir(directory))
    return [os.path.join(directory, name) for name in names
            if not name.startswith(".") and ".old-" not in name and os.path.isdir(os.path.join(directory, name))]


def parse_experiment(directory, keyword="accuracy", test_log=False, ci95=False):
    """Print one line per seed folder and the summary; return (mean, spread) or None when nothing found."""
    values = []
    for folder in experiment_folders(directory):
        value, log_path = read_run_result(folder, keyword, test_log)
        if value is not None:
            print(f"file: {log_path}. {keyword}: {value:.2f}%")
            values.append(value)
    if not values:
        print(f"Nothing found in {directory}")
        return None
    mean, spread = summarise(values, ci95)
    print("===")
    print(f"Summary of directory: {directory}")
    print(f"* {keyword}: {mean:.2f}% +- {spread:.2f}%")
    print("===")
    return mean, spread


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="folder holding seed1/, seed2/, ... (or experiments with --multi-exp)")
    parser.add_argument("--test-log", action="store_true", help="logs are --eval-only runs")
    parser.add_argument("--ci95", action="store_true", help="report 1.96*std/sqrt(n) instead of std")
    parser.add_argument("--multi-exp", action="store_true", help="parse every experiment subfolder")
    parser.add_argument("--keyword", default="accuracy", help="result line to read (accuracy, macro_f1, ...)")
    args = parser.parse_args(argv)
    if not args.multi_exp:
        parse_experiment(args.directory, args.keyword, args.test_log, args.ci95)
        return
    means = []
    for folder in experiment_folders(args.directory):
        result = parse_experiment(folder, args.keyword, args.test_log, args.ci95)
        if result is not None:
            means.append(result[0])
    if means:
        print(f"Average over {len(means)} experiments: {args.keyword}: {np.mean(means):.2f}%")


if __name__ == "__main__":
    main()
