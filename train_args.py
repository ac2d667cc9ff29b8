"""train.py's command line, importable without torch: the parser, the flags that set config keys, and the
"request" of a call (the config keys its files, flags and KEY VALUE options ask for), which run.json
records and the scripts compare before they skip a finished run (tools/provenance.py)."""
import argparse
from ast import literal_eval

import yaml

# argparse dest -> the config key it sets (CoOp's reset_cfg); a flag left empty sets nothing.
FLAG_KEYS = {
    "root": "DATASET.ROOT", "output_dir": "OUTPUT_DIR", "resume": "RESUME", "seed": "SEED",
    "source_domains": "DATASET.SOURCE_DOMAINS", "target_domains": "DATASET.TARGET_DOMAINS",
    "transforms": "INPUT.TRANSFORMS", "trainer": "TRAINER.NAME", "backbone": "MODEL.BACKBONE.NAME",
    "head": "MODEL.HEAD.NAME",
}


def build_parser(description=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (any value >= 0, 0 included)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line")
    return parser


def flag_values(args):
    """{config key: value} of the flags given (the seed counts when it is 0)."""
    values = {}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None and value != "" and value != []:
            values[key] = value
    return values


def reset_cfg(cfg, args):
    """Set the config keys the flags name (after the YAML files, before the KEY VALUE options)."""
    for key, value in flag_values(args).items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = getattr(node, parent)
        setattr(node, leaf, value)


def plain(value):
    """A config value as yacs reads it (strings through literal_eval, tuples as lists), so that 2 in a
    YAML file and "2" on the command line are one value."""
    if isinstance(value, str):
        try:
            value = literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    return value


def flatten(tree, prefix=""):
    """{"A.B": value} of a nested mapping."""
    flat = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = plain(value)
    return flat


def request(args):
    """{config key: value} that this call sets, in train.py's order (dataset YAML, trainer YAML, flags,
    KEY VALUE options; the last one wins): the config minus the code's defaults."""
    keys = {}
    for path in (args.dataset_config_file, args.config_file):
        if path:
            with open(path) as handle:
                keys.update(flatten(yaml.safe_load(handle)))
    keys.update({key: plain(value) for key, value in flag_values(args).items()})
    opts = list(args.opts or [])
    keys.update({key: plain(value) for key, value in zip(opts[0::2], opts[1::2])})
    return keys
