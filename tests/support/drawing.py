"""Hand-drawn digits for the page test: stroke paths for 0-9, PIL rendering, and the page's preprocessing.

The browser test replays these strokes on the page's canvas. A model that has never seen handwriting
(the serving fixtures train on noisy synthetic prototypes) cannot read them, so the test trains a small
one on the same strokes, jittered and rendered here with PIL, then preprocessed by :func:`mnist_like`,
a numpy copy of ``mnistLike`` in ``serving/static/draw.js``. If the page's preprocessing drifts from
MNIST's recipe (crop, fit 20x20 keeping the aspect ratio, centre of mass at the centre), the replayed
digits stop being recognised.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SIZE, BOX = 28, 20
CANVAS = 280  # the page's canvas, in pixels
PEN = CANVAS / 15  # the page's line width

Stroke = list[tuple[float, float]]

# Unit box, x to the right, y down; one list of strokes per digit.
STROKES: dict[int, list[Stroke]] = {
    0: [[(0.5 + 0.3 * np.sin(t), 0.5 - 0.45 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 25)]],
    1: [[(0.38, 0.2), (0.56, 0.05), (0.52, 0.95)]],
    2: [[(0.2, 0.3), (0.3, 0.12), (0.5, 0.05), (0.7, 0.12), (0.78, 0.3), (0.7, 0.48), (0.5, 0.65),
         (0.2, 0.95), (0.85, 0.95)]],
    3: [[(0.2, 0.12), (0.45, 0.04), (0.72, 0.12), (0.75, 0.3), (0.5, 0.46), (0.75, 0.6), (0.78, 0.8),
         (0.55, 0.95), (0.2, 0.88)]],
    4: [[(0.6, 0.05), (0.15, 0.65), (0.85, 0.65)], [(0.65, 0.3), (0.65, 0.95)]],
    5: [[(0.8, 0.05), (0.3, 0.05), (0.25, 0.45), (0.5, 0.4), (0.75, 0.5), (0.8, 0.72), (0.65, 0.92),
         (0.4, 0.95), (0.2, 0.85)]],
    6: [[(0.7, 0.05), (0.45, 0.2), (0.28, 0.5), (0.25, 0.75), (0.4, 0.95), (0.65, 0.92), (0.75, 0.72),
         (0.6, 0.55), (0.4, 0.58), (0.27, 0.72)]],
    7: [[(0.15, 0.08), (0.85, 0.08), (0.5, 0.55), (0.35, 0.95)]],
    8: [[(0.7, 0.15), (0.5, 0.05), (0.3, 0.15), (0.32, 0.35), (0.5, 0.48), (0.72, 0.62), (0.75, 0.82),
         (0.5, 0.95), (0.28, 0.82), (0.3, 0.62), (0.5, 0.48), (0.68, 0.35), (0.7, 0.15)]],
    9: [[(0.75, 0.3), (0.6, 0.1), (0.4, 0.08), (0.25, 0.25), (0.35, 0.45), (0.6, 0.45), (0.75, 0.3),
         (0.72, 0.6), (0.65, 0.95)]],
}  # fmt: skip


def densify(stroke: Stroke, step: float = 0.04) -> Stroke:
    """Extra points along each segment, so a replayed stroke moves in small steps like a hand."""
    points = [stroke[0]]
    for (x0, y0), (x1, y1) in zip(stroke, stroke[1:], strict=False):
        parts = max(1, int(np.ceil(np.hypot(x1 - x0, y1 - y0) / step)))
        points += [(x0 + (x1 - x0) * k / parts, y0 + (y1 - y0) * k / parts) for k in range(1, parts + 1)]
    return points


def jittered(digit: int, rng: np.random.Generator, strength: float = 1.0) -> list[Stroke]:
    """The digit's strokes in canvas pixels, under a random affine map (size, slant, rotation, place)."""
    scale = CANVAS * rng.uniform(0.45, 0.75)
    aspect = rng.uniform(0.8, 1.2) ** strength
    angle = rng.normal(0, 0.12 * strength)
    shear = rng.normal(0, 0.15 * strength)
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = matrix @ np.array([[aspect, shear], [0, 1 / aspect]]) * scale
    centre = CANVAS / 2 + rng.uniform(-0.12, 0.12, 2) * CANVAS * strength
    strokes = []
    for stroke in STROKES[digit]:
        points = np.asarray(densify(stroke)) - 0.5
        points = points @ matrix.T + centre + rng.normal(0, 0.004 * CANVAS * strength, (len(points), 2))
        strokes.append([(float(x), float(y)) for x, y in np.clip(points, PEN, CANVAS - PEN)])
    return strokes


def render(strokes: list[Stroke], pen: float = PEN, oversample: int = 2) -> np.ndarray:
    """Ink coverage in [0, 1] of the canvas (anti-aliased by drawing larger and averaging down)."""
    big = CANVAS * oversample
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    width = round(pen * oversample)
    for stroke in strokes:
        points = [(x * oversample, y * oversample) for x, y in stroke]
        draw.line(points, fill=255, width=width, joint="curve")
        for x, y in (points[0], points[-1]):  # round caps, as the page's lineCap
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
    return np.asarray(image.resize((CANVAS, CANVAS), Image.Resampling.BOX), np.float64) / 255


def _overlaps(src: int, dst: int) -> np.ndarray:
    """[dst, src] area-averaging weights (as ``overlaps`` in draw.js)."""
    ratio = src / dst
    edges = np.arange(src + 1)
    lo, hi = np.arange(dst)[:, None] * ratio, (np.arange(dst)[:, None] + 1) * ratio
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None) / ratio


def _round(value: float) -> int:
    return int(np.floor(value + 0.5))  # JavaScript's Math.round


def mnist_like(alpha: np.ndarray) -> np.ndarray | None:
    """Coverage [H, W] -> float32 [28, 28] in 0..255 exactly as the page computes it (None if blank)."""
    rows, cols = np.nonzero(alpha > 0)
    if len(rows) == 0:
        return None
    crop = alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    bh, bw = crop.shape
    scale = BOX / max(bw, bh)
    tw, th = max(1, _round(bw * scale)), max(1, _round(bh * scale))
    small = _overlaps(bh, th) @ crop @ _overlaps(bw, tw).T
    mass = small.sum()
    cx = (small.sum(axis=0) * (np.arange(tw) + 0.5)).sum() / mass
    cy = (small.sum(axis=1) * (np.arange(th) + 0.5)).sum() / mass
    ox = min(max(_round(SIZE / 2 - cx), 0), SIZE - tw)
    oy = min(max(_round(SIZE / 2 - cy), 0), SIZE - th)
    image = np.zeros((SIZE, SIZE), np.float32)
    image[oy : oy + th, ox : ox + tw] = np.minimum(255, np.floor(small * 255 + 0.5))
    return image


def training_set(per_digit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Jittered, rendered and preprocessed strokes: float32 images [10 * per_digit, 28, 28], labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for digit in range(10):
        for _ in range(per_digit):
            pen = PEN * rng.uniform(0.7, 1.3)
            images.append(mnist_like(render(jittered(digit, rng), pen)))
            labels.append(digit)
    return np.stack(images), np.asarray(labels, np.uint8)
