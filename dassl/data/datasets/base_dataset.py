"""Datum and DatasetBase: the containers every loader fills, and Dassl's exact few-shot sampler."""
import os.path as osp
import random
from collections import defaultdict


class Datum:
    """One image: path, label, domain and class name (read-only)."""

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(f"Datum.impath must be a str, got {type(impath).__name__}")
        if not osp.isfile(impath):
            raise FileNotFoundError(f'Image listed in the dataset is missing: "{impath}"')
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return f"Datum({self._impath!r}, label={self._label}, classname={self._classname!r})"


def warn_shared_classnames(lab2cname):
    """Prompts are built from class names (lower-cased, underscores read as spaces, as CLIP's tokenizer
    and the prompt builders do): labels whose names read the same get identical text features."""
    labels_of = defaultdict(list)
    for label, name in lab2cname.items():
        labels_of[" ".join(name.replace("_", " ").lower().split())].append(label)
    for labels in labels_of.values():
        if len(labels) > 1:
            names = " / ".join(sorted({repr(lab2cname[label]) for label in labels}))
            print(f"Warning: labels {', '.join(map(str, labels))} share the class name {names}, so their "
                  "prompts are the same and the model cannot tell them apart; give each its own name")


class DatasetBase:
    """Holds the splits; class names and counts are read off ``train_x``."""

    dataset_dir = ""
    domains = []

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)
        warn_shared_classnames(self._lab2cname)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source):
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        lab2cname = {label: mapping[label] for label in labels}
        return lab2cname, [lab2cname[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains):
        for domain in list(source_domains) + list(target_domains):
            if domain not in self.domains:
                raise ValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """K items per class, drawn exactly as Dassl does so a seed selects the same images as CoOp.

        Labels are visited in order of first appearance; a class with fewer than K items is kept
        whole without touching the random stream (unless ``repeat``).
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        print(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for items in tracker.values():
                if len(items) >= num_shots:
                    sampled = random.sample(items, num_shots)
                elif repeat:
                    sampled = random.choices(items, k=num_shots)
                else:
                    sampled = items
                dataset.extend(sampled)
            output.append(dataset)
        return output[0] if len(output) == 1 else output

    @staticmethod
    def split_dataset_by_label(data_source):
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source):
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output
