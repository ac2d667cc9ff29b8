"""Download, extract and check the CoOp benchmarks into CoOp's layout under $DATA.

    python -m datasets.prepare oxford_pets eurosat --root $DATA     # fetch what is missing, then check
    python -m datasets.prepare all --root $DATA --check             # check only, one verdict per dataset
    python -m datasets.prepare oxford_pets --root $DATA --mirror http://host/dir   # a local mirror

Downloads resume after an interruption; an archive is deleted once extracted. ImageNet and Stanford
Cars cannot be fetched automatically: the command prints what to download and where to put it.
"""
import argparse
import os
import os.path as osp
import shutil
import sys
import tarfile
import zipfile

import plugins
from clip.download import DownloadError, download_file
from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset

from .sizes import EXPECTED
from .sources import SOURCES

DATASET_NAMES = {
    "oxford_pets": "OxfordPets", "caltech101": "Caltech101", "stanford_cars": "StanfordCars",
    "oxford_flowers": "OxfordFlowers", "food101": "Food101", "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397", "dtd": "DescribableTextures", "eurosat": "EuroSAT", "ucf101": "UCF101",
    "imagenet": "ImageNet", "imagenetv2": "ImageNetV2", "imagenet_sketch": "ImageNetSketch",
    "imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR",
}


class PrepareError(RuntimeError):
    pass


def safe_extract(archive, target):
    """Unpack into ``target``, refusing members that would land outside it."""
    target = osp.abspath(target)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            for member in handle.namelist():
                path = osp.abspath(osp.join(target, member))
                if not path.startswith(target + os.sep) and path != target:
                    raise PrepareError(f"{archive}: member {member!r} would be written outside {target}")
            handle.extractall(target)
        return
    try:
        with tarfile.open(archive) as handle:
            handle.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise PrepareError(f"Cannot extract {archive}: {error}. Delete it and run again") from error


def fetch_drive_file(file_id, destination, mirror):
    """Google Drive files through gdown (resumable); from ``mirror`` when one is given."""
    if osp.isfile(destination):
        return
    if mirror:
        download_file(f"{mirror}/{osp.basename(destination)}", destination)
        return
    import gdown

    result = gdown.download(id=file_id, output=destination, quiet=False, resume=True)
    if result is None or not osp.isfile(destination):
        raise PrepareError(
            f"Google Drive refused file id {file_id} (often a rate limit). Download it in a browser from "
            f"https://drive.google.com/uc?id={file_id} and save it as {destination}"
        )


def prepare(name, root, mirror=None):
    source = SOURCES[name]
    folder = osp.join(root, source["folder"])
    os.makedirs(folder, exist_ok=True)
    downloads = osp.join(folder, ".downloads")
    for url, file_name, extract_to in source.get("archives", []):
        if mirror:
            url = f"{mirror}/{file_name}"
        done_marker = osp.join(folder, f".extracted-{file_name}")
        if extract_to is None:
            download_file(url, osp.join(folder, file_name), desc=file_name)
            continue
        if osp.exists(done_marker):
            continue
        archive = download_file(url, osp.join(downloads, file_name), desc=file_name)
        print(f"Extracting {file_name} ...")
        safe_extract(archive, osp.normpath(osp.join(folder, extract_to)))
        open(done_marker, "w").close()
        os.remove(archive)
    for file_id, file_name in source.get("drive", []):
        fetch_drive_file(file_id, osp.join(folder, file_name), mirror)
    for file_name in source.get("extract_drive", []):
        done_marker = osp.join(folder, f".extracted-{file_name}")
        if not osp.exists(done_marker):
            safe_extract(osp.join(folder, file_name), folder)
            open(done_marker, "w").close()
    if "move" in source:
        inner, outer = (osp.join(folder, part) for part in source["move"])
        if osp.isdir(inner):
            for entry in os.listdir(inner):
                shutil.move(osp.join(inner, entry), osp.join(outer, entry))
            shutil.rmtree(osp.dirname(inner))
    if source.get("manual"):
        print(f"{name}: download by hand: {source['manual']}")
    if osp.isdir(downloads) and not os.listdir(downloads):
        os.rmdir(downloads)


def count_dataset(name, root):
    """(classes, train, val, test) as the loader reads the full dataset, or raises with the problem."""
    cfg = get_cfg_default()
    plugins.extend_cfg(cfg, plugins.import_plugins(("datasets",)))
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = DATASET_NAMES[name]
    cfg.VERBOSE = False
    dataset = build_dataset(cfg)
    test_only = dataset.train_x is dataset.test
    val = dataset.val if dataset.val is not dataset.test else None
    return (
        dataset.num_classes,
        None if test_only else len(dataset.train_x),
        None if val is None else len(val),
        len(dataset.test),
    )


def check(name, root):
    """One verdict line; True when the folder is complete and has the expected sizes."""
    try:
        counts = count_dataset(name, root)
    except (RuntimeError, OSError, ValueError) as error:
        print(f"{name}: FAILED: {error}")
        return False
    expected = EXPECTED.get(name)
    labels = ("classes", "train", "val", "test")
    shown = ", ".join(f"{label} {value:,}" for label, value in zip(labels, counts) if value is not None)
    wrong = [f"{label} {got:,} (expected {want:,})" for label, got, want in zip(labels, counts, expected or counts)
             if want is not None and got != want]
    if wrong:
        print(f"{name}: FAILED: {'; '.join(wrong)}")
        return False
    print(f"{name}: OK ({shown})")
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", help=f"'all' or any of: {', '.join(SOURCES)}")
    parser.add_argument("--root", default=os.environ.get("DATA", "./data"), help="the data root ($DATA)")
    parser.add_argument("--check", action="store_true", help="only check existing folders")
    parser.add_argument("--mirror", default=None, help="fetch every file from MIRROR/<file name> instead")
    args = parser.parse_args(argv)
    names = list(SOURCES) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {list(SOURCES)} or 'all'")
    root = osp.abspath(args.root)
    all_ok = True
    for name in names:
        if not args.check:
            try:
                prepare(name, root, args.mirror)
            except (DownloadError, PrepareError) as error:
                print(f"{name}: FAILED: {error}")
                all_ok = False
                continue
        all_ok = check(name, root) and all_ok
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
