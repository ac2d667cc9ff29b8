"""Where each benchmark's files come from (CoOp's DATASETS.md), for the loaders' messages and prepare.

``archives``: (url, file name, folder to extract into, relative to the dataset folder);
``drive``: (Google Drive id, file name); ``manual``: instructions when no direct download exists.
"""
SOURCES = {
    "oxford_pets": {
        "folder": "oxford_pets",
        "archives": [
            ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "images.tar.gz", "."),
            ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz", "annotations.tar.gz", "."),
        ],
        "drive": [("1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs", "split_zhou_OxfordPets.json")],
    },
    "caltech101": {
        "folder": "caltech-101",
        "archives": [
            ("http://www.vision.caltech.edu/Image_Datasets/Caltech101/101_ObjectCategories.tar.gz",
             "101_ObjectCategories.tar.gz", "."),
        ],
        "drive": [("1hyarUivQE36mY6jSomru6Fjd-JzwcCzN", "split_zhou_Caltech101.json")],
    },
    "stanford_cars": {
        "folder": "stanford_cars",
        "archives": [],
        "drive": [("1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT", "split_zhou_StanfordCars.json")],
        "manual": (
            "The official Stanford Cars links (ai.stanford.edu/~jkrause/car196/) are dead. Fetch a mirror "
            "of cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat, and "
            "extract them so that $DATA/stanford_cars/ holds cars_train/, cars_test/, devkit/ and "
            "cars_test_annos_withlabels.mat (Kaggle copies use other folder names: rename them)."
        ),
    },
    "oxford_flowers": {
        "folder": "oxford_flowers",
        "archives": [
            ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", "102flowers.tgz", "."),
            ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", "imagelabels.mat", None),
        ],
        "drive": [("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0", "cat_to_name.json"),
                  ("1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT", "split_zhou_OxfordFlowers.json")],
    },
    "food101": {
        "folder": "food-101",
        "archives": [("https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/food-101.tar.gz",
                      "food-101.tar.gz", "..")],
        "drive": [("1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl", "split_zhou_Food101.json")],
    },
    "fgvc_aircraft": {
        "folder": "fgvc_aircraft",
        "archives": [("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                      "fgvc-aircraft-2013b.tar.gz", ".")],
        "drive": [],
        "move": ("fgvc-aircraft-2013b/data", "."),
    },
    "sun397": {
        "folder": "sun397",
        "archives": [("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "SUN397.tar.gz", "."),
                     ("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",
                      "Partitions.zip", ".")],
        "drive": [("1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq", "split_zhou_SUN397.json")],
    },
    "dtd": {
        "folder": "dtd",
        "archives": [("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                      "dtd-r1.0.1.tar.gz", "..")],
        "drive": [("1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x", "split_zhou_DescribableTextures.json")],
    },
    "eurosat": {
        "folder": "eurosat",
        "archives": [("http://madm.dfki.de/files/sentinel/EuroSAT.zip", "EuroSAT.zip", ".")],
        "drive": [("1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o", "split_zhou_EuroSAT.json")],
    },
    "ucf101": {
        "folder": "ucf101",
        "archives": [],
        "drive": [("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O", "UCF-101-midframes.zip"),
                  ("1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y", "split_zhou_UCF101.json")],
        "extract_drive": ["UCF-101-midframes.zip"],
    },
    "imagenet": {
        "folder": "imagenet",
        "archives": [],
        "drive": [("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF", "classnames.txt")],
        "manual": (
            "ImageNet needs an account at image-net.org: download the ILSVRC2012 train and val archives "
            "and extract them to $DATA/imagenet/images/train/<wnid>/ and $DATA/imagenet/images/val/<wnid>/ "
            "(the val images sorted into one folder per class)."
        ),
    },
    "imagenetv2": {
        "folder": "imagenetv2",
        "archives": [("https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
                      "imagenetv2-matched-frequency.tar.gz", ".")],
        "drive": [("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF", "classnames.txt")],
    },
    "imagenet_sketch": {
        "folder": "imagenet-sketch",
        "archives": [],
        "drive": [("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF", "classnames.txt")],
        "manual": "Download ImageNet-Sketch from github.com/HaohanWang/ImageNet-Sketch into "
                  "$DATA/imagenet-sketch/images/<wnid>/.",
    },
    "imagenet_a": {
        "folder": "imagenet-adversarial",
        "archives": [("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", "imagenet-a.tar", ".")],
        "drive": [("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF", "classnames.txt")],
    },
    "imagenet_r": {
        "folder": "imagenet-rendition",
        "archives": [("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", "imagenet-r.tar", ".")],
        "drive": [("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF", "classnames.txt")],
    },
}


def split_source(config_name):
    """A sentence saying where the split file of ``config_name`` comes from."""
    source = SOURCES.get(config_name, {})
    for drive_id, name in source.get("drive", []):
        if name.startswith("split_zhou_"):
            return f"{name} is on Google Drive, id {drive_id}; `python -m datasets.prepare {config_name}` fetches it"
    return ""
