"""A synthetic, clustered embedding pool written straight into labelloop's embedding cache.

Shared by ``bench/score.py`` and ``bench/cycle.py``. Vectors look like sentence embeddings of a
long-tailed intent data set, without running an encoder on millions of texts:

* ``C`` classes with a geometric long tail (the largest is ``imbalance`` times the smallest),
  as ``bench/datasets.py`` derives banking77_lt;
* each class has ``SUBCLUSTERS`` sub-centres around a random unit centre (paraphrase groups),
  and a vector is ``normalise(sub_centre + NOISE · z / sqrt(d))``: two items of one class have
  a cosine of about 0.4-0.6, items of different classes about 0;
* rows are L2-normalised and stored as float16, the daemon's format.

Item ``i`` has the id ``syn{i:09d}`` and is cached under ``daemon.pool.byo_hash(id)`` in the
``byo-d{dim}`` cache, exactly where ``labelloop pool add`` puts bring-your-own vectors, so the
cycle benchmark can point a store at the same files. A finished pool is reused when its
``synthetic.json`` matches the request; generation is deterministic given the seed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.cache import EmbeddingCache

__all__ = ["SyntheticPool", "ensure_pool", "item_hash", "item_id"]

SUBCLUSTERS = 6
SUB_SPREAD = 0.6  # sub-centre = normalise(centre + SUB_SPREAD · random unit)
NOISE = 0.9
WRITE_ROWS = 1 << 18


@dataclass(frozen=True, slots=True)
class SyntheticPool:
    """What was generated. ``<model_key>.labels.i16`` holds each row's class."""

    root: Path  # the embedding cache root (``<data_dir>/embeddings``)
    model_key: str
    n: int
    dim: int
    n_classes: int
    imbalance: float
    seed: int

    def labels(self) -> npt.NDArray[np.int16]:
        """(n,) the class of each row."""
        return np.fromfile(self.root / f"{self.model_key}.labels.i16", dtype=np.int16, count=self.n)


def item_id(i: int) -> str:
    return f"syn{i:09d}"


def item_hash(i: int) -> str:
    """``daemon.pool.byo_hash(item_id(i))``, inlined so generating needs no database layer."""
    return hashlib.sha256(("byo:" + item_id(i)).encode()).hexdigest()


def class_priors(n_classes: int, imbalance: float) -> npt.NDArray[np.float64]:
    sizes = imbalance ** (-np.arange(n_classes) / max(1, n_classes - 1))
    priors: npt.NDArray[np.float64] = sizes / sizes.sum()
    return priors


def ensure_pool(
    root: Path, n: int, *, dim: int = 384, n_classes: int = 77, imbalance: float = 100.0, seed: int = 0,
    log: bool = True,
) -> SyntheticPool:
    """Return the synthetic pool under ``root`` (an embedding-cache root), generating what is missing."""
    pool = SyntheticPool(root, f"byo-d{dim}", n, dim, n_classes, imbalance, seed)
    spec_path = root / f"{pool.model_key}.synthetic.json"
    spec = {k: v for k, v in asdict(pool).items() if k not in ("root", "n")}
    if spec_path.exists() and json.loads(spec_path.read_text()) != spec:
        raise ValueError(f"{root} holds another synthetic pool ({spec_path.read_text()}); use another folder")
    root.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    labels_path = root / f"{pool.model_key}.labels.i16"
    with EmbeddingCache(root, model_key=pool.model_key, dim=dim) as cache:
        have = len(cache)
        if have != (labels_path.stat().st_size // 2 if labels_path.exists() else 0):
            raise ValueError(f"{root}: cache and labels disagree (interrupted?); delete the folder and rerun")
        started = time.perf_counter()
        centres = _centres(n_classes, dim, seed)
        priors = class_priors(n_classes, imbalance)
        for start in range(have, n, WRITE_ROWS):
            stop = min(n, start + WRITE_ROWS)
            rng = np.random.default_rng([seed, start])
            classes = rng.choice(n_classes, size=stop - start, p=priors).astype(np.int16)
            subs = rng.integers(SUBCLUSTERS, size=stop - start)
            noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * np.float32(NOISE / np.sqrt(dim))
            vectors = centres[classes, subs] + noise
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            cache.put([item_hash(i) for i in range(start, stop)], vectors)
            with labels_path.open("ab") as handle:
                handle.write(classes.tobytes())
            if log:
                print(f"  synthetic pool: {stop:,}/{n:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    return pool


def _centres(n_classes: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    """(C, SUBCLUSTERS, d) unit sub-centres."""
    rng = np.random.default_rng([seed, 1])
    centres = _unit(rng.standard_normal((n_classes, 1, dim)))
    subs = _unit(centres + SUB_SPREAD * _unit(rng.standard_normal((n_classes, SUBCLUSTERS, dim))))
    return subs.astype(np.float32)


def _unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    unit: npt.NDArray[np.float64] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return unit
