"""Hand-written prompt per dataset, as CoOp's zero-shot CLIP uses them (its ``CUSTOM_TEMPLATES``)."""

DEFAULT_TEMPLATE = "a photo of a {}."

DATASET_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
    "ToyShapes": "a photo of a {}.",
}


def dataset_template(dataset_name):
    """The dataset's template; datasets without one get CLIP's generic prompt."""
    return DATASET_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)
