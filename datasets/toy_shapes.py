"""ToyShapes: the demo's benchmark, drawn by ``python -m toyworld.make_dataset`` (docs/demo.md)."""
from .fine_grained import split_dataset

ToyShapes = split_dataset("ToyShapes", "toy_shapes", "images", "split_zhou_ToyShapes.json", "toy_shapes")
