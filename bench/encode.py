"""Encoder throughput: our ``TransformerEmbedder`` and ``OnnxEmbedder`` against ``SentenceTransformer.encode``.

    make bench-encode                                       # 1,000 texts per set, 2 threads, best of 3
    .venv/bin/python bench/encode.py --n 2000 --threads 2 --repeats 5

Both encoders load the bundled all-MiniLM-L6-v2 (``models.embedder.default_model_path()``), run in
this one process with the same ``torch.set_num_threads``, and see the same texts:

* *short*: Banking77 queries (``/work/shared/data/banking77/data.csv``, ~15 tokens each);
* *long*: AG News articles joined four at a time (~200 tokens each, under the 256-token limit);
* *tiny*: texts of at most five words from SMS Spam, TREC-6 and Banking77, in a seeded random
  order (~8 tokens each): where int8 quantisation strays furthest from fp32.

Variants: ours in fp32, bf16 and ``"auto"`` (bf16 where the CPU computes it natively, else fp32);
ours on ONNX Runtime in fp32 and int8 (``models.onnx_embedder``, ``intra_op_num_threads`` = the same
threads; exported once to ``bench/out/onnx``, the export is not timed), int8 as shipped (texts of at
most ``FP32_MAX_TOKENS`` tokens run in fp32) and with every text in int8 ("no fp32 route"); and
sentence-transformers in fp32 (the reference) and bf16 (its model cast with ``.to(bfloat16)``), with
its default ``batch_size=32``. Each repeat runs every variant once, in alternation, after one untimed warm-up
each; a variant's figure is its best repeat (the least disturbed by other jobs on the machine). The
1-, 5- and 15-minute load averages are printed with the results, since other jobs share these
cores. Cosines are per text, to sentence-transformers fp32 and to our torch fp32 (min and mean).
The ONNX variants need the extra: ``pip install 'labelloop[onnx]'``.
Results also go to ``bench/out/encode.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from transformers.utils import logging as hf_logging

from models.embedder import TransformerEmbedder, default_model_path, resolve_dtype
from models.onnx_embedder import FP32_MAX_TOKENS, OnnxEmbedder

DATA = Path("/work/shared/data")
OUT = Path(__file__).resolve().parent / "out" / "encode.json"
Vectors = npt.NDArray[np.float32]


def read_texts(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def text_sets(n: int) -> dict[str, list[str]]:
    short = read_texts(DATA / "banking77" / "data.csv")[:n]
    news = read_texts(DATA / "ag_news" / "data.csv")
    long = [" ".join(news[i : i + 4]) for i in range(0, 4 * n, 4)]
    few_words = [text for name in ("sms_spam", "trec6", "banking77") for text in read_texts(DATA / name / "data.csv")
                 if len(text.split()) <= 5]
    tiny = [few_words[p] for p in np.random.default_rng(0).permutation(len(few_words))[:n]]
    return {"short": short, "long": long[:n], "tiny": tiny}


def ours(dtype: str) -> Callable[[Sequence[str]], Vectors]:
    embedder = TransformerEmbedder(dtype=dtype)
    return embedder.encode


def ours_onnx(
    precision: str, threads: int, *, fp32_max_tokens: int = FP32_MAX_TOKENS
) -> Callable[[Sequence[str]], Vectors]:
    embedder = OnnxEmbedder(cache_dir=OUT.parent / "onnx", precision=precision, threads=threads,
                            fp32_max_tokens=fp32_max_tokens)
    return embedder.encode


def theirs(dtype: torch.dtype) -> Callable[[Sequence[str]], Vectors]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.to(dtype)

    def encode(texts: Sequence[str]) -> Vectors:
        vectors = model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)

    return encode


def token_count(texts: list[str]) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    ids = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    return float(np.mean([len(row) for row in ids]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="texts per set")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (best kept)")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    auto = resolve_dtype("auto", torch.device("cpu"))
    variants: dict[str, Callable[[Sequence[str]], Vectors]] = {
        "sentence-transformers fp32": theirs(torch.float32),
        "sentence-transformers bf16": theirs(torch.bfloat16),
        "labelloop fp32": ours("fp32"),
        "labelloop bf16": ours("bf16"),
        f"labelloop auto (= {str(auto).removeprefix('torch.')})": ours("auto"),
        "labelloop onnx fp32": ours_onnx("fp32", args.threads),
        "labelloop onnx int8": ours_onnx("int8", args.threads),
        "labelloop onnx int8, no fp32 route": ours_onnx("int8", args.threads, fp32_max_tokens=0),
    }
    results: list[dict[str, object]] = []
    load_before = os.getloadavg()
    for set_name, texts in text_sets(args.n).items():
        for encode in variants.values():
            encode(texts[:64])  # warm-up: weights, kernels, allocator
        best: dict[str, float] = dict.fromkeys(variants, float("inf"))
        vectors: dict[str, Vectors] = {}
        for _ in range(args.repeats):
            for name, encode in variants.items():
                started = time.perf_counter()
                vectors[name] = encode(texts)
                best[name] = min(best[name], time.perf_counter() - started)
        reference = vectors["sentence-transformers fp32"]
        our_fp32 = vectors["labelloop fp32"]
        base_rate = len(texts) / best["sentence-transformers fp32"]
        tokens = token_count(texts)
        for name in variants:
            to_st = np.einsum("ij,ij->i", vectors[name], reference)
            to_ours = np.einsum("ij,ij->i", vectors[name], our_fp32)
            rate = len(texts) / best[name]
            results.append({
                "set": set_name, "mean_tokens": round(tokens, 1), "variant": name, "texts": len(texts),
                "best_s": round(best[name], 3), "sentences_per_s": round(rate, 1),
                "speedup_vs_st_fp32": round(rate / base_rate, 2),
                "min_cos_vs_st_fp32": round(float(to_st.min()), 6),
                "mean_cos_vs_st_fp32": round(float(to_st.mean()), 6),
                "min_cos_vs_ours_fp32": round(float(to_ours.min()), 6),
                "mean_cos_vs_ours_fp32": round(float(to_ours.mean()), 6),
            })
    load_after = os.getloadavg()
    render(results, args, load_before, load_after)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "loadavg_before": load_before, "loadavg_after": load_after, "results": results,
    }, indent=2))


def render(
    results: list[dict[str, object]], args: argparse.Namespace,
    load_before: tuple[float, float, float], load_after: tuple[float, float, float],
) -> None:
    header = ("set", "tok", "variant", "sent/s", "x ST fp32", "min cos ST fp32", "mean cos ST fp32",
              "min cos our fp32", "mean cos our fp32")
    rows = [
        (str(r["set"]), str(r["mean_tokens"]), str(r["variant"]), f"{r['sentences_per_s']:.0f}",
         f"{r['speedup_vs_st_fp32']:.2f}", f"{r['min_cos_vs_st_fp32']:.6f}", f"{r['mean_cos_vs_st_fp32']:.6f}",
         f"{r['min_cos_vs_ours_fp32']:.6f}", f"{r['mean_cos_vs_ours_fp32']:.6f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = " | ".join(f"{{:<{w}}}" for w in widths)
    print(f"threads={args.threads} repeats={args.repeats} (best of) n={args.n} torch={torch.__version__}")
    print("loadavg before: {:.2f} {:.2f} {:.2f}  after: {:.2f} {:.2f} {:.2f}".format(*load_before, *load_after))
    print(line.format(*header))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))


if __name__ == "__main__":
    main()
