"""The sizes of the CoOp benchmarks: checked by datasets.prepare and read by the cost estimate of
tools.sweep (plain data, so importing it costs nothing)."""
# (classes, train, val, test) of the full datasets, as CoOp reports them; val is None without one.
EXPECTED = {
    "oxford_pets": (37, 2944, 736, 3669),
    "caltech101": (100, 4128, 1649, 2465),
    "stanford_cars": (196, 6509, 1635, 8041),
    "oxford_flowers": (102, 4093, 1633, 2463),
    "food101": (101, 50500, 20200, 30300),
    "fgvc_aircraft": (100, 3334, 3333, 3333),
    "sun397": (397, 15880, 3970, 19850),
    "dtd": (47, 2820, 1128, 1692),
    "eurosat": (10, 13500, 5400, 8100),
    "ucf101": (101, 7639, 1898, 3783),
    "imagenet": (1000, 1281167, None, 50000),
    "imagenetv2": (1000, None, None, 10000),
    "imagenet_sketch": (1000, None, None, 50889),
    "imagenet_a": (200, None, None, 7500),
    "imagenet_r": (200, None, None, 30000),
}
