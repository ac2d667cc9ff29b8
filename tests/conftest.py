"""One CPU thread per test process (and per process a test starts): the tests' models are tiny, and
threads only cost when a test runs several processes at once on a 2-core machine (they spin-wait)."""
import os

import torch

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1)
