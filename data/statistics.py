"""What the inspection CLI reports: corpus sizes, token lengths, drops, packing efficiency."""

from typing import Any

import numpy as np

from data import sources, streams, token_ids
from data.tokenizer import UNK_ID, Tokenizer


def length_summary(lengths: np.ndarray) -> dict[str, float]:
    """Mean, median, 95th percentile and maximum of token counts (EOS included)."""
    if len(lengths) == 0:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "mean": round(float(np.mean(lengths)), 2),
        "p50": float(np.percentile(lengths, 50)),
        "p95": float(np.percentile(lengths, 95)),
        "max": float(np.max(lengths)),
    }


def split_lengths(data_config, tokenizer: Tokenizer, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Token counts (with EOS) of the sources and targets of `split`: two int arrays [examples].

    The training split's come from its stored token ids (tokenized once, data/token_ids.py)."""
    if split == data_config.train_split:
        ids = token_ids.training_token_ids(data_config, tokenizer)
        return ids.lengths["inputs"], ids.lengths["targets"]
    pairs = sources.raw_examples(data_config, split)
    source_ids = tokenizer.encode_batch([source for source, _ in pairs])
    target_ids = tokenizer.encode_batch([target for _, target in pairs])
    return np.array([len(i) for i in source_ids]), np.array([len(i) for i in target_ids])


def packing_efficiency(
    config, tokenizer: Tokenizer, *, epoch_examples: int, max_batches: int
) -> dict[str, float]:
    """Non-pad fraction of the packed training rows, over the first `epoch_examples` examples
    (one epoch: the training examples that fit) or `max_batches` batches, whichever is first.

    Runs the real training iterator (one process) from the start.
    """
    iterator = streams.train_iterator(config, tokenizer, process_index=0, process_count=1)
    examples = target_tokens = input_tokens = cells = batches = 0
    try:
        while examples < epoch_examples and batches < max_batches:
            batch = next(iterator)
            examples += int(batch["targets_segment_ids"].max(axis=1).sum())
            target_tokens += int(np.count_nonzero(batch["targets"]))
            input_tokens += int(np.count_nonzero(batch["inputs"]))
            cells += batch["targets"].size
            batches += 1
    finally:
        iterator.close()
    return {
        "non_pad_fraction": round(target_tokens / cells, 4),
        "inputs_non_pad_fraction": round(input_tokens / cells, 4),
        "examples_per_row": round(examples / (cells / config.data.max_length), 2),
        "packing_batches": batches,
    }


def corpus_statistics(config, tokenizer: Tokenizer, *, max_packing_batches: int) -> dict[str, Any]:
    """Everything `python input_pipeline.py` prints, as one JSON-ready dict."""
    data = config.data
    source_lengths, target_lengths = split_lengths(data, tokenizer, data.train_split)
    too_long = np.maximum(source_lengths, target_lengths) > data.max_length
    stats: dict[str, Any] = {
        "source": data.source,
        "direction": f"{data.source_lang}->{data.target_lang}",
        "vocab_size": tokenizer.vocab_size,
        "train_examples": len(source_lengths),
        "dropped_examples": int(np.sum(too_long)),
        "max_length": data.max_length,
        "train_source_tokens": length_summary(source_lengths),
        "train_target_tokens": length_summary(target_lengths),
        "train_unknown_token_fraction": unknown_token_fraction(data, tokenizer),
    }
    for role, split in (("eval", data.eval_split), ("test", data.test_split)):
        if split:
            lengths = np.maximum(*split_lengths(data, tokenizer, split))
            stats[f"{role}_examples"] = len(lengths)
            stats[f"{role}_truncated"] = int(np.sum(lengths > data.max_eval_length))
    stats["empty_line_pairs_dropped"] = {
        split: counts["empty_dropped"] for split, counts in sources.line_counts(data).items()
    }
    fitting = stats["train_examples"] - stats["dropped_examples"]
    stats.update(
        packing_efficiency(
            config, tokenizer, epoch_examples=fitting, max_batches=max_packing_batches
        )
    )
    return stats


def unknown_token_fraction(data_config, tokenizer: Tokenizer, sample: int = 2000) -> float:
    """Fraction of unknown-token ids in the first `sample` training target sentences."""
    ids = token_ids.training_token_ids(data_config, tokenizer)
    count = min(sample, ids.num_examples)
    ids = np.asarray(ids.ids["targets"][: ids.starts["targets"][count]])
    return round(float(np.mean(ids == UNK_ID)), 5)
