"""The torch head behind ProxyClassifier and its full-batch L-BFGS training."""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from models.errors import NonFiniteInput

__all__ = [
    "HEAD_DTYPES",
    "TORCH_DTYPES",
    "HeadSpec",
    "Layers",
    "bfloat16_speedup",
    "cast_layers",
    "fold_affine",
    "forward_logit_columns",
    "forward_proba",
    "train_head",
]

Layers = list[tuple[torch.Tensor, torch.Tensor]]
TORCH_DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}
HEAD_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class HeadSpec:
    """Hyper-parameters of one training run (see ``ProxyClassifier`` for their meaning)."""

    hidden_dim: int
    epochs: int
    lr: float
    weight_decay: float
    random_state: int


def train_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_classes: int,
    class_weights: torch.Tensor | None,
    spec: HeadSpec,
) -> nn.Module:
    """Fit a linear or one-hidden-layer head by full-batch L-BFGS on weighted cross-entropy.

    The loss is ``CE(weights) + weight_decay / 2 * ||W||^2`` over weight matrices (not biases).
    Training stops after ``epochs`` iterations or once the loss moves by < 1e-5 nats: on Banking77
    embeddings that is ~60 evaluations and the held-out NLL is within 0.001 of full convergence
    (which, with few labels, would only overfit more).
    L-BFGS with a strong-Wolfe line search needs no learning-rate tuning and is deterministic for
    a given initialisation, which comes from ``spec.random_state`` alone (no global RNG).

    Args:
        features: ``(n, d)`` float32, standardised, on the training device.
        targets: ``(n,)`` int64 class positions in ``[0, n_classes)``, same device.
        n_classes: C >= 2; classes absent from ``targets`` still get an output.
        class_weights: ``(C,)`` float32 loss weight per class, or ``None`` for equal weights.
        spec: hyper-parameters; ``epochs`` is the L-BFGS iteration cap.

    Returns:
        The trained head in eval mode, mapping ``(m, d)`` to ``(m, C)`` logits.
    """
    head = _build(features.shape[1], n_classes, spec).to(features.device)
    weights = [p for name, p in head.named_parameters() if name.endswith("weight")]
    optimizer = torch.optim.LBFGS(
        head.parameters(),
        lr=spec.lr,
        max_iter=spec.epochs,
        history_size=20,
        tolerance_grad=1e-4,
        tolerance_change=1e-5,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(features), targets, weight=class_weights)
        loss = loss + 0.5 * spec.weight_decay * sum((w * w).sum() for w in weights)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    head.train()
    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return head.eval()


def _build(n_features: int, n_classes: int, spec: HeadSpec) -> nn.Module:
    generator = torch.Generator().manual_seed(spec.random_state)
    if spec.hidden_dim <= 0:
        linear = nn.Linear(n_features, n_classes)
        with torch.no_grad():  # the problem is convex: start at zero, no randomness needed
            linear.weight.zero_()
            linear.bias.zero_()
        return linear
    first, second = nn.Linear(n_features, spec.hidden_dim), nn.Linear(spec.hidden_dim, n_classes)
    with torch.no_grad():
        for layer in (first, second):
            fan_in = layer.weight.shape[1]
            layer.weight.copy_(torch.randn(tuple(layer.weight.shape), generator=generator) / fan_in**0.5)
            layer.bias.zero_()
    head = nn.Sequential(first, nn.GELU(), second)
    return head


def fold_affine(layers: Layers, center: torch.Tensor, scale: float, temperature: float) -> Layers:
    """Fold the input centring and scaling into the first layer and the temperature into the last.

    ``softmax(head((x - center) / scale) / temperature)`` then becomes ``softmax(folded(x))``: the
    head reads the raw float32 rows, which saves two full passes over every (n, d) chunk and the
    division of every logit. The folded weights are computed in float64 and rounded once to
    float32, so they agree with the unfolded arithmetic to float32 rounding.

    Args:
        layers: ``[(W, b), ...]``, ``W`` ``(out, in)``; a GELU sits between consecutive layers.
        center: ``(d,)`` subtracted from every input row.
        scale: > 0, the inputs' global scale after centring.
        temperature: > 0, the logits' divisor.

    Returns:
        New float32 ``[(W, b), ...]`` on the layers' device; the inputs are not changed.
    """
    folded: Layers = []
    for depth, (weight, bias) in enumerate(layers):
        w, b = weight.double(), bias.double()
        if depth == 0:
            w = w / scale
            b = b - w @ center.double()
        if depth == len(layers) - 1:
            w, b = w / temperature, b / temperature
        folded.append((w.float().contiguous(), b.float().contiguous()))
    return folded


def cast_layers(layers: Layers, dtype: torch.dtype) -> Layers:
    """Return copies of ``layers`` in ``dtype`` (bfloat16 layers make :func:`forward_proba` run in bfloat16)."""
    return [(weight.to(dtype), bias.to(dtype)) for weight, bias in layers]


def forward_proba(features: torch.Tensor, folded: Layers, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Class probabilities ``(m, C)`` of raw rows ``(m, d)`` float32 through :func:`fold_affine` layers.

    The layers run in their own dtype (float32, or bfloat16 after :func:`cast_layers`: the rows
    are rounded to it first; float16 rows, as the embedding store keeps them, are widened on the
    way, see :func:`_to_layer_dtype`); the softmax runs in ``dtype`` (float64 keeps rows summing to 1
    within 1e-15, float32 within 1e-6 and is what a million-row scoring pass asks for).

    Raises:
        ValueError: a row gives a non-finite logit: it has NaN or inf (any such value reaches
            every logit) or values so large that a logit overflows.
    """
    hidden = _to_layer_dtype(features, folded[0][0].dtype)
    for depth, (weight, bias) in enumerate(folded):
        if depth:
            hidden = nn.functional.gelu(hidden)
        hidden = nn.functional.linear(hidden, weight, bias)
    proba = torch.softmax(hidden.to(dtype), dim=1)
    if not bool(torch.isfinite(proba.sum())):  # one reduction: a NaN/inf logit leaves NaN in its row
        raise NonFiniteInput("X contains NaN or inf (or values so large that the logits overflow)")
    return proba


def forward_logit_columns(features: torch.Tensor, folded: Layers) -> torch.Tensor:
    """Logits ``(C, m)`` float32 of raw rows ``(m, d)``, one column per row: :func:`forward_proba` before its softmax.

    The product runs as ``W @ x.T`` (as fast as ``x @ W.T``) in the layers' own dtype, so the
    class axis comes out first. Seen from numpy as the ``(m, C)`` transpose, a softmax or score
    over each row's classes then reduces across rows, in whole-vector operations: on 75 classes
    that took 0.06 s per 1M rows against torch's row-wise softmax's 0.12 s. Non-finite rows are
    not checked for here (the softmax does, :func:`models.classifier.ProxyClassifier.proba_from_logits`).
    """
    hidden = _to_layer_dtype(features, folded[0][0].dtype).T
    for depth, (weight, bias) in enumerate(folded):
        if depth:
            hidden = nn.functional.gelu(hidden)
        hidden = torch.addmm(bias[:, None], weight, hidden)
    return hidden.float()


_STAGING_MAX_BYTES = 16 << 20  # per thread: a scoring chunk of 8,192 x 384 float32 rows fits, in 12 MB
_WIDEN_BLOCK_BYTES = 3 << 19  # float32 rows widened at once on the way to bfloat16: 1.5 MB, in a 2 MB L2
_staging = threading.local()


def _to_layer_dtype(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``features`` in ``dtype``; float16 rows on the CPU go through float32 buffers kept per thread.

    A scoring pass converts each of ~120 chunks per million rows. Fresh float32 and bfloat16
    tensors for every chunk cost page faults that took longer than the conversions themselves
    (1M x 384 rows: 0.28 s, against 0.12 s into reused buffers), and torch's direct float16 ->
    bfloat16 cast is slower than going through float32 (0.23-0.31 s). On the way to bfloat16
    the float32 step is taken :data:`_WIDEN_BLOCK_BYTES` at a time, so it never leaves the
    core's cache: 0.25 s for the widening and the product per 1M rows, against 0.34 s through
    a whole float32 chunk. Chunks bigger than :data:`_STAGING_MAX_BYTES` of float32 are
    converted into fresh tensors, so what a thread keeps stays small.
    """
    if features.dtype != torch.float16:
        return features.to(dtype)
    if features.device.type != "cpu" or features.numel() * 4 > _STAGING_MAX_BYTES:
        return features.to(torch.float32).to(dtype)
    n, d = features.shape
    chunk_rows = max(n, _STAGING_MAX_BYTES // (4 * d))  # sized once for any chunk that fits
    if dtype == torch.float32:
        return _staging_buffer("wide", torch.float32, d, chunk_rows)[:n].copy_(features)
    narrow = _staging_buffer("narrow", dtype, d, chunk_rows)[:n]
    block = max(1, _WIDEN_BLOCK_BYTES // (4 * d))
    step = _staging_buffer("step", torch.float32, d, block)
    for start in range(0, n, block):
        stop = min(n, start + block)
        narrow[start:stop].copy_(step[: stop - start].copy_(features[start:stop]))
    return narrow


def _staging_buffer(name: str, dtype: torch.dtype, width: int, rows: int) -> torch.Tensor:
    """This thread's ``name`` buffer, at least ``(rows, width)`` in ``dtype`` (reallocated when it is not)."""
    buffer: torch.Tensor | None = getattr(_staging, name, None)
    if buffer is None or buffer.dtype != dtype or buffer.shape[1] != width or buffer.shape[0] < rows:
        buffer = torch.empty((rows, width), dtype=dtype)
        setattr(_staging, name, buffer)
    return buffer


@functools.cache
def bfloat16_speedup(device: str, *, rows: int = 8_192, dim: int = 384, classes: int = 64) -> float:
    """How many times faster a bfloat16 linear head runs than a float32 one on ``device``, measured once.

    CPUs with AVX512-BF16 or AMX (and recent GPUs) compute bfloat16 products natively, 2-5x faster
    than float32; elsewhere bfloat16 is emulated and slower. A ~20 ms measurement on a typical
    chunk (best of 3 each) says which case this is, whatever the ISA flags are called.
    """
    target = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(rows, dim, generator=generator).to(target)
    weight, bias = torch.randn(classes, dim, generator=generator).to(target), torch.zeros(classes, device=target)

    def best_of_3(dtype: torch.dtype) -> float:
        x, w, b = features.to(dtype), weight.to(dtype), bias.to(dtype)
        nn.functional.linear(x, w, b)  # warm-up: kernel selection, first-touch
        times = []
        for _ in range(3):
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            started = time.perf_counter()
            nn.functional.linear(x, w, b)
            if target.type == "cuda":
                torch.cuda.synchronize(target)
            times.append(time.perf_counter() - started)
        return min(times)

    with torch.inference_mode():
        return best_of_3(torch.float32) / max(best_of_3(torch.bfloat16), 1e-9)
