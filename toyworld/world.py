"""Objects with a shape, colour, pattern and size, drawn on small images, each with a caption.

Two styles: ``pretrain`` (plain grey backgrounds, neutral light) for the tiny CLIP's contrastive
pretraining, and ``downstream`` for the ToyShapes benchmark: gradient backgrounds with pixel noise,
jittered object colours, all seen under a warm light. The warm light is what zero-shot transfer trips on
(a yellow object looks orange, a blue one purple), while the image features still tell the classes apart,
so prompt learning has something real to adapt to (docs/demo.md gives the measured gap).
"""
import numpy as np
from PIL import Image, ImageDraw

WORLD_VERSION = 2    # bump whenever drawing changes, so existing ToyShapes folders are redrawn
SHAPES = ["circle", "square", "triangle", "diamond", "cross"]
COLOURS = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 85, 220),
    "yellow": (235, 205, 35), "purple": (140, 55, 185), "orange": (245, 135, 25),
}
PATTERNS = ["plain", "striped", "dotted"]
SIZES = ["small", "large"]
IMAGE_SIZE = 32
FILL_JITTER = 20    # colour noise of downstream objects (std, 0-255 scale)
BACKGROUND_NOISE = 3    # pixel noise of downstream backgrounds (std, 0-255 scale)
WARM_LIGHT = (1.15, 0.8, 0.8)    # per-channel gain on downstream images
# Object sizes stay those of pretraining: the tiny CLIP saw two radii only, and any size jitter
# destroys its shape features (a linear probe then does no better than zero-shot).


def shape_polygon(shape, cx, cy, r):
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        t = r / 3
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
                (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
                (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(shape)


def background(rng, style):
    if style == "pretrain":
        grey = int(rng.integers(150, 250))
        return np.full((IMAGE_SIZE, IMAGE_SIZE, 3), grey, dtype=np.float32)
    # downstream: a light two-colour gradient plus noise, never seen in pretraining
    start, end = rng.integers(150, 250, size=(2, 3))
    ramp = np.linspace(0, 1, IMAGE_SIZE, dtype=np.float32)[:, None, None]
    image = start * (1 - ramp) + end * ramp
    return np.repeat(image, IMAGE_SIZE, axis=1) + rng.normal(0, BACKGROUND_NOISE, (IMAGE_SIZE, IMAGE_SIZE, 3))


def draw(shape, colour, pattern, size, seed, style="pretrain"):
    """One object as a PIL image; the same arguments always give the same pixels."""
    rng = np.random.default_rng(seed)
    canvas = Image.fromarray(np.clip(background(rng, style), 0, 255).astype(np.uint8))
    radius = {"small": 6.0, "large": 11.0}[size]
    margin = radius + 1
    cx, cy = rng.uniform(margin, IMAGE_SIZE - margin, size=2)
    mask = Image.new("L", canvas.size, 0)
    pen = ImageDraw.Draw(mask)
    if shape == "circle":
        pen.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    else:
        pen.polygon(shape_polygon(shape, cx, cy, radius), fill=255)
    fill = np.array(COLOURS[colour], dtype=np.float32)
    if style == "downstream":
        fill = np.clip(fill + rng.normal(0, FILL_JITTER, 3), 0, 255)
    layer = np.broadcast_to(fill, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    if pattern == "striped":
        layer[(yy // 2) % 2 == 0] *= 0.45
    elif pattern == "dotted":
        layer[((yy % 4) < 2) & ((xx % 4) < 2)] *= 0.45
    obj = Image.fromarray(layer.astype(np.uint8))
    canvas.paste(obj, (0, 0), mask)
    if style == "downstream":
        lit = np.asarray(canvas, dtype=np.float32) * np.array(WARM_LIGHT, dtype=np.float32)
        canvas = Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))
    return canvas


def caption(shape, colour, pattern, size, rng):
    """A caption naming the object; attributes are dropped at random so short names are learned too."""
    words = [size if rng.random() < 0.5 else None, colour,
             pattern if pattern != "plain" and rng.random() < 0.7 else None, shape]
    return "a photo of a " + " ".join(w for w in words if w) + "."


def random_object(rng):
    return (SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))],
            PATTERNS[rng.integers(len(PATTERNS))], SIZES[rng.integers(len(SIZES))])


def class_names():
    """ToyShapes' classes: every colour-shape pair, ordered by colour then shape."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
