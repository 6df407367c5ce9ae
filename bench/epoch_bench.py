"""Seconds per training epoch of the `default` preset's model, with and without XLA and the distortions.

    .venv/bin/python bench/epoch_bench.py --data-dir ../shared/datasets/mnist

Why the `default` preset sets ``runtime.jit_compile: true`` (docs/tuning.md, "XLA"). The model is the
preset's own (``jobs.search_space.build_mlp``, 784-800-800-10, batch 256, EMA, dropout 0.1) on the 60k
training images, as the final fit trains it. Each variant is built, compiled and warmed up by one epoch
(which pays XLA's compilation and the first partial batch), then timed over ``--epochs`` more; the
variants alternate in one process, so machine noise spreads over all of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OFF = {"translate_pixels": 0, "rotation_degrees": 0.0, "zoom": 0.0, "elastic_pixels": 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"), help="official MNIST files")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per variant (default 2)")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data-dir or MNIST_DATA_DIR is required")

    import numpy as np

    from jobs import config as cfg
    from jobs.data import load_data
    from jobs.runtime import setup_runtime
    from jobs.search_space import build_mlp, one_hot

    config = cfg.load_config("default", environ={}, cli={"data": {"dir": args.data_dir}})
    setup_runtime(config)
    _, splits = load_data(config)
    x, y = splits.train_and_val()
    labels = one_hot(y)
    space = config.space
    values = {
        "num_layers": space.num_layers,
        **{f"units_{i}": space.units for i in range(space.num_layers)},
        "dropout": 0.1,
        "learning_rate": 3e-3,
        "batch_size": space.batch_size,
        "lr_schedule": space.lr_schedule,
        "label_smoothing": space.label_smoothing,
        "translate_pixels": space.translate_pixels,
        "rotation_degrees": space.rotation_degrees,
        "zoom": space.zoom,
        "shear_degrees": space.shear_degrees,
        "elastic_pixels": space.elastic_pixels,
        "elastic_grid": space.elastic_grid,
        "ema_momentum": space.ema_momentum,
    }
    steps = int(np.ceil(len(x) / values["batch_size"]))
    print(f"800x800 MLP, batch {values['batch_size']}, {len(x)} images per epoch; seconds per epoch:")
    for jit in (False, True):
        for name, overrides in (("distortions on", {}), ("distortions off", OFF)):
            model = build_mlp(
                {**values, **overrides}, steps, 1 + args.epochs, config.runtime.steps_per_execution, jit
            )
            started = time.monotonic()
            model.fit(x, labels, batch_size=values["batch_size"], epochs=1, verbose=0)
            first = time.monotonic() - started
            timed = []
            for _ in range(args.epochs):
                started = time.monotonic()
                model.fit(x, labels, batch_size=values["batch_size"], epochs=1, verbose=0)
                timed.append(time.monotonic() - started)
            print(
                f"  XLA {'on ' if jit else 'off'}  {name:16s} first epoch {first:5.2f}  "
                f"then {' '.join(f'{t:5.2f}' for t in timed)}  (mean {sum(timed) / len(timed):.2f})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
