"""DataManager: dataset -> transforms -> loaders, as Dassl builds them."""
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose, Normalize, Resize, ToTensor

from dassl.utils import read_image
from dassl.utils.distributed import is_distributed, shared_seed

from .datasets import build_dataset
from .samplers import build_distributed_sampler, build_sampler
from .transforms import INTERPOLATION_MODES, build_transform


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64,
                      n_domain=0, n_ins=2, tfm=None, is_train=True, dataset_wrapper=None):
    if is_distributed():
        sampler = build_distributed_sampler(sampler_type, data_source, is_train, shared_seed(cfg.SEED))
    else:
        sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size,
                                n_domain=n_domain, n_ins=n_ins)
    if dataset_wrapper is None:
        dataset_wrapper = DatasetWrapper
    loader = DataLoader(
        dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(sampler) >= batch_size,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
    )
    # Under torchrun one process's evaluation shard is empty when there are fewer images than processes.
    if (len(loader) if is_train else len(data_source)) == 0:
        raise ValueError(f"The data loader is empty: {len(data_source)} items, batch size {batch_size}")
    return loader


class DataManager:
    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        dataset = build_dataset(cfg)
        tfm_train = custom_tfm_train or build_transform(cfg, is_train=True)
        tfm_test = custom_tfm_test or build_transform(cfg, is_train=False)

        self.train_loader_x = build_data_loader(
            cfg, sampler_type=cfg.DATALOADER.TRAIN_X.SAMPLER, data_source=dataset.train_x,
            batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE, n_domain=cfg.DATALOADER.TRAIN_X.N_DOMAIN,
            n_ins=cfg.DATALOADER.TRAIN_X.N_INS, tfm=tfm_train, is_train=True,
            dataset_wrapper=dataset_wrapper,
        )
        self.train_loader_u = None
        if dataset.train_u:
            u_cfg = cfg.DATALOADER.TRAIN_U
            source = cfg.DATALOADER.TRAIN_X if u_cfg.SAME_AS_X else u_cfg
            self.train_loader_u = build_data_loader(
                cfg, sampler_type=source.SAMPLER, data_source=dataset.train_u,
                batch_size=source.BATCH_SIZE, n_domain=source.N_DOMAIN, n_ins=source.N_INS,
                tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper,
            )
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, sampler_type=cfg.DATALOADER.TEST.SAMPLER, data_source=dataset.val,
                batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=tfm_test, is_train=False,
                dataset_wrapper=dataset_wrapper,
            )
        self.test_loader = build_data_loader(
            cfg, sampler_type=cfg.DATALOADER.TEST.SAMPLER, data_source=dataset.test,
            batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=tfm_test, is_train=False,
            dataset_wrapper=dataset_wrapper,
        )

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        table = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            table.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            table.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            table.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            table.append(["# val", f"{len(self.dataset.val):,}"])
        table.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(table))


class DatasetWrapper(Dataset):
    """Reads and transforms one Datum into Dassl's batch dict."""

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")
        interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
        to_tensor = [Resize(cfg.INPUT.SIZE, interpolation=interp_mode), ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = Compose(to_tensor)

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)
        if self.transform is not None:
            transforms = self.transform if isinstance(self.transform, (list, tuple)) else [self.transform]
            for i, tfm in enumerate(transforms):
                img = self._transform_image(tfm, img0)
                output["img" if i == 0 else f"img{i + 1}"] = img
        else:
            output["img"] = img0
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm, img0):
        views = [tfm(img0) for _ in range(self.k_tfm)]
        return views[0] if len(views) == 1 else views
