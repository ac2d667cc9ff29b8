"""The ten CoOp benchmarks that ship a ``split_zhou_*.json``: only their folders differ.

Google Drive ids of the split files are in ``datasets/sources.py``; folder layouts in docs/datasets.md.
"""
from dassl.data.datasets import DATASET_REGISTRY

from .base import CoOpDataset
from .sources import split_source


def split_dataset(name, folder, image_dir, split_file, config_name):
    """Register a loader that differs from the others only by where its files are."""
    cls = type(name, (CoOpDataset,), {
        "dataset_dir": folder,
        "image_dir": image_dir,
        "split_file": split_file,
        "split_source": split_source(config_name),
        "config_name": config_name,
        "__doc__": f"{name}: $DATA/{folder}/{image_dir or '.'} with {split_file}.",
        "__module__": __name__,
    })
    return DATASET_REGISTRY.register(cls)


OxfordPets = split_dataset("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "oxford_pets")
Caltech101 = split_dataset("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                           "caltech101")
StanfordCars = split_dataset("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json",
                             "stanford_cars")
OxfordFlowers = split_dataset("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                              "oxford_flowers")
Food101 = split_dataset("Food101", "food-101", "images", "split_zhou_Food101.json", "food101")
SUN397 = split_dataset("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "sun397")
DescribableTextures = split_dataset("DescribableTextures", "dtd", "images",
                                    "split_zhou_DescribableTextures.json", "dtd")
EuroSAT = split_dataset("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "eurosat")
UCF101 = split_dataset("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "ucf101")
