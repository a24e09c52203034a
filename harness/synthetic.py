"""Synthetic workloads (`data.source: synthetic`): random texts whose token lengths follow a chosen distribution,
labels uniform over data.synthetic.num_labels, for speed and memory runs without a data set.

Each text is built from words that are single tokens of the run's tokenizer (alphabetic vocabulary entries
that tokenise to exactly one token, also after a space), joined by spaces, so that tokenising it yields exactly
the drawn length (special tokens included, as the collator counts them); every text is verified by tokenising
it, and redrawn if a tokenizer merges two words. Seeded: train with the synthetic seed, validation and test with
the seed plus an offset each.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.recipe import DataSpec, LengthsSpec, SyntheticSpec

SPLIT_SEED_OFFSETS = {"train": 0, "validation": 1_000_003, "test": 2_000_006}
MAX_POOL_CANDIDATES = 20_000  # vocabulary entries tried as words (a pool of a few thousand is plenty)
REDRAWS = 20  # attempts at a text whose tokenised length came out wrong before giving up


class SyntheticError(ValueError):
    """A synthetic workload that cannot be made (raised as harness.data.DataError by the caller)."""


def load_tokenizer_for(spec: SyntheticSpec) -> Any:
    """The tokenizer named by data.synthetic.tokenizer (the run's, filled in by the recipe)."""
    from transformers import AutoTokenizer

    from harness.preflight import resolve_model_source

    if not spec.tokenizer or spec.tokenizer.startswith("config:"):
        raise SyntheticError(
            f"data.synthetic.tokenizer: {spec.tokenizer!r} is not a tokenizer; set model.tokenizer (or "
            "data.synthetic.tokenizer) to a Hub id, local folder or package:<python package>/<folder>"
        )
    return AutoTokenizer.from_pretrained(resolve_model_source(spec.tokenizer))


def word_pool(tokenizer: Any) -> list[str]:
    """Alphabetic vocabulary entries that are one token each, alone and after a space (so joined by spaces they
    stay one token each), in id order."""
    vocab = tokenizer.get_vocab()
    candidates = []
    for entry, _ in sorted(vocab.items(), key=lambda item: item[1]):
        word = entry.lstrip("\u2581\u0120")  # sentencepiece's and byte-level BPE's word-start markers
        if word.isascii() and word.isalpha() and len(word) > 1 and entry not in tokenizer.all_special_tokens:
            candidates.append(word)
        if len(candidates) >= MAX_POOL_CANDIDATES:
            break
    candidates = sorted(set(candidates))
    encoded = tokenizer([f"{word} {word}" for word in candidates], add_special_tokens=False)["input_ids"]
    pool = [word for word, ids in zip(candidates, encoded) if len(ids) == 2 and ids[0] == ids[1]]
    if len(pool) < 10:
        raise SyntheticError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has too few single-token words "
            f"({len(pool)}) to build synthetic texts; set data.synthetic.tokenizer to another tokenizer"
        )
    return pool


def draw_lengths(lengths: LengthsSpec, count: int, rng: np.random.Generator,
                 measured: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """count token lengths from the distribution; histogram: drawn with replacement from measured."""
    kind = lengths.distribution
    if kind == "fixed":
        return np.full(count, lengths.length, dtype=np.int64)
    if kind == "uniform":
        return rng.integers(lengths.min, lengths.max + 1, size=count)
    if kind == "normal":
        drawn = np.rint(rng.normal(lengths.mean, lengths.std, size=count))
        return np.clip(drawn, lengths.min, lengths.max).astype(np.int64)
    if measured is None or not len(measured):
        raise SyntheticError("data.synthetic.lengths: a histogram needs the measured lengths of its file")
    return rng.choice(measured, size=count, replace=True).astype(np.int64)


def measure_lengths(lengths: LengthsSpec, tokenizer: Any, max_length: int) -> np.ndarray:
    """The token lengths of a real data file's text column, as the run would tokenise it (truncated at
    data.max_length, special tokens included)."""
    from harness.data import check_texts, load_file, source_of

    named = f"data.synthetic.lengths.file ({lengths.file})"
    ds = load_file(lengths.file, source_of(lengths.file), named)
    if lengths.column not in ds.column_names:
        raise SyntheticError(
            f"{named}: has no column '{lengths.column}' (columns: {', '.join(ds.column_names)}); "
            "set data.synthetic.lengths.column"
        )
    from datasets import DatasetDict

    check_texts(DatasetDict({"histogram": ds}), lengths.column, {"histogram": lengths.file})
    encoded = tokenizer(list(ds[lengths.column]), truncation=True, max_length=max_length)["input_ids"]
    return np.array([len(ids) for ids in encoded], dtype=np.int64)


def build_texts(lengths: np.ndarray, tokenizer: Any, pool: list[str], rng: np.random.Generator) -> list[str]:
    """One text per length, each tokenising to exactly that many tokens (special tokens included)."""
    special = tokenizer.num_special_tokens_to_add(pair=False)
    if len(lengths) and int(lengths.min()) - special < 1:
        raise SyntheticError(
            f"data.synthetic.lengths: a length of {int(lengths.min())} leaves no room for a word next to the "
            f"tokenizer's {special} special tokens; draw lengths of at least {special + 1}"
        )
    words = np.array(pool)

    def text_of(length: int) -> str:
        return " ".join(words[rng.integers(0, len(words), size=length - special)])

    texts = [text_of(int(n)) for n in lengths]
    wrong = range(len(texts))
    for _ in range(REDRAWS):
        measured = tokenizer([texts[i] for i in wrong], add_special_tokens=True)["input_ids"] if wrong else []
        wrong = [i for i, ids in zip(wrong, measured) if len(ids) != lengths[i]]
        if not wrong:
            return texts
        for i in wrong:
            texts[i] = text_of(int(lengths[i]))
    raise SyntheticError(
        f"data.synthetic: {len(wrong)} text(s) did not tokenise to their drawn length after {REDRAWS} draws "
        "(the tokenizer merges words); set data.synthetic.tokenizer to another tokenizer"
    )


def summary(lengths: np.ndarray) -> dict[str, float]:
    """mean, p50, p90 and max of drawn token lengths (for the result's training.data)."""
    return {
        "mean": round(float(np.mean(lengths)), 3),
        "p50": float(np.percentile(lengths, 50)),
        "p90": round(float(np.percentile(lengths, 90)), 3),
        "max": int(np.max(lengths)),
    }


def make_splits(spec: DataSpec, tokenizer: Any | None = None) -> tuple[dict[str, dict[str, list]], dict[str, Any]]:
    """({split: {"text": [...], "labels": [...]}}, the record: seed, tokenizer, distribution and each split's
    length summary). Train has train_samples rows, validation and test eval_samples each."""
    synthetic = spec.synthetic
    assert synthetic is not None and synthetic.seed is not None  # filled in by DataSpec.check
    tokenizer = tokenizer or load_tokenizer_for(synthetic)
    measured = None
    if synthetic.lengths.distribution == "histogram":
        measured = measure_lengths(synthetic.lengths, tokenizer, spec.max_length)
    pool = word_pool(tokenizer)
    splits, record = {}, {"seed": synthetic.seed, "tokenizer": synthetic.tokenizer,
                          "distribution": synthetic.lengths.distribution, "lengths": {}}  # fmt: skip
    counts = {"train": synthetic.train_samples, "validation": synthetic.eval_samples, "test": synthetic.eval_samples}
    for split, count in counts.items():
        rng = np.random.default_rng(synthetic.seed + SPLIT_SEED_OFFSETS[split])
        lengths = draw_lengths(synthetic.lengths, count, rng, measured)
        labels = rng.integers(0, synthetic.num_labels, size=count)
        splits[split] = {"text": build_texts(lengths, tokenizer, pool, rng), "labels": labels.tolist()}
        record["lengths"][split] = summary(lengths)
    if measured is not None:
        record["source_lengths"] = summary(measured)
    return splits, record


def label_names(num_labels: int) -> list[str]:
    width = len(str(num_labels - 1))
    return [f"class_{i:0{width}d}" for i in range(num_labels)]
