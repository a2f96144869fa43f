"""`data.source: stacked`: Stacked digits, the mode-collapse benchmark, offline.

Three of scikit-learn's bundled 8x8 digits, one in each channel of an RGB image (Stacked MNIST,
Metz et al. 2017; Srivastava et al. 2017, VEEGAN; Lin et al. 2018, PacGAN): 10 x 10 x 10 = 1,000
modes, each a triple of digit classes, equally likely. A generator that covers every mode makes all
1,000 triples about equally often; a collapsed one makes few. The evaluate stage counts them
(pipeline/metrics/modes.py) with an evaluator trained on the single channels.

The digits are split first: the 20% (data.val_fraction) of the 1,797 digits whose pixels hash
lowest are held out, and the val images are stacked only from those, the train images only from the
rest, so no digit of a held-out image was ever seen in training. Which digits go into which image is
drawn with a fixed seed: the same data.stacked.count gives the same images on every machine.

Each record carries its channels' classes (the manifest's `channel_labels`, read back by
`pipeline.dataset.channel_labels`) and is named after them: `stacked/371/00042` holds a 3, a 7 and a 1.
The images themselves carry no class (one class, `stacked`): a model learns them unconditionally.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from pipeline.data.sources import Record, Source, digits_records, split_of

CLASS = "stacked"
CHANNELS = 3  # a digit in each
SEED = 20_170_101  # which digits are stacked together: fixed, so the data never depends on anything else


def held_out(pixels: np.ndarray, val_fraction: float) -> bool:
    """Whether a base digit is held out: prepare's own split of its pixels' hash (the digits source's split)."""
    return split_of(hashlib.sha256(pixels.tobytes()).hexdigest(), val_fraction) == "val"


def stacked_source(count: int, val_fraction: float) -> Source:
    digits = [(r.array, int(r.label)) for r in digits_records()]
    pools = {"val": [d for d in digits if held_out(d[0], val_fraction)]}
    pools["train"] = [d for d in digits if not held_out(d[0], val_fraction)]
    sizes = {"val": round(count * val_fraction)}
    sizes["train"] = count - sizes["val"]

    def records() -> Iterator[Record]:
        rng = np.random.default_rng(SEED)
        index = 0
        for split in ("train", "val"):
            pool = pools[split]
            seen: set[tuple[int, ...]] = set()
            while len(seen) < sizes[split]:  # distinct triples: prepare would drop a repeat as a duplicate
                row = tuple(int(i) for i in rng.integers(len(pool), size=CHANNELS))
                if row in seen:
                    continue
                seen.add(row)
                pixels = np.stack([pool[i][0] for i in row], axis=-1)  # [8, 8, 3]
                labels = [pool[i][1] for i in row]
                yield Record(name=f"{CLASS}/{''.join(map(str, labels))}/{index:05d}", label=CLASS, array=pixels,
                             split=split, channel_labels=tuple(labels))  # fmt: skip
                index += 1

    notes = {"stacked": {"count": count, "train": sizes["train"], "val": sizes["val"], "modes": 10**CHANNELS,
                         "base_digits": {s: len(p) for s, p in pools.items()}}}  # fmt: skip
    return Source(records(), total=count, declared_classes=[CLASS], channel_classes=[str(d) for d in range(10)],
                  notes=notes)  # fmt: skip
