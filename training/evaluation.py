"""Evaluation during training: validation loss/accuracy, and BLEU of decoded translations.

Loss and accuracy are teacher-forced over padded validation batches (all hosts take part,
each with its slice of every batch). BLEU decodes the first `num_bleu_examples` validation
sentences with `decoding.translate_texts` (beam size and length penalty from config.decode),
each decoding batch split over the mesh's batch axes and the hosts as training batches are,
and scores them against the references with sacreBLEU's corpus BLEU; exact match (the share
of outputs equal to their reference) is reported with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

import input_pipeline
from decoding import scoring, translate_texts
from decoding.settings import DecodeSettings
from model import Transformer
from training import partitioning
from training.loss import summarize
from training.steps import EvalStep, make_eval_step


def evaluate_loss(
    eval_step: EvalStep,
    params: Any,
    local_batches: Sequence[dict[str, np.ndarray]],
    mesh: Mesh,
    global_rows: int,
) -> dict[str, float]:
    """Token-weighted loss, nll, perplexity and accuracy over all `local_batches` (this host's
    rows of each global batch of `global_rows` rows)."""
    total = None
    for local in local_batches:
        sums = eval_step(params, partitioning.global_batch(local, mesh, global_rows))
        total = sums if total is None else {k: total[k] + sums[k] for k in total}
    if total is None:
        raise ValueError("The validation split gave no batches; check data.eval_split.")
    return summarize(jax.device_get(total))


def translate(
    model: Transformer,
    params: Any,
    tokenizer: Any,
    sources: Sequence[str],
    decode_config: Any,
    max_input_length: int,
    mesh: Mesh | None = None,
) -> list[str]:
    """Translations of `sources` with the decode settings of `decode_config` (config.decode).
    Given a `mesh`, each batch (its size rounded up to a multiple of the mesh's batch shards)
    is split over those shards and the hosts; every host calls this with the same sources."""
    settings = DecodeSettings.from_config(decode_config)
    rows = None
    if mesh is not None:
        batch_size, rows = partitioning.decoding_rows(mesh, settings.batch_size)
        settings = dataclasses.replace(settings, batch_size=batch_size)
    return translate_texts(
        model, params, tokenizer, list(sources), settings, max_input_length, rows=rows
    )


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU corpus BLEU (cased, 13a tokenization) of detokenized text, as translate.py
    scores it (decoding/scoring.py)."""
    return scoring.bleu(hypotheses, references).score


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of hypotheses equal to their reference after stripping outer whitespace."""
    pairs = list(zip(hypotheses, references, strict=True))
    return sum(h.strip() == r.strip() for h, r in pairs) / max(len(pairs), 1)


def sample_lines(
    pairs: Sequence[tuple[str, str]], hypotheses: Sequence[str], count: int
) -> list[str]:
    """'source => hypothesis (reference: ...)' for the first `count` examples."""
    lines = []
    for (source, reference), hypothesis in list(zip(pairs, hypotheses, strict=False))[:count]:
        mark = "ok" if hypothesis.strip() == reference.strip() else "reference: " + reference
        lines.append(f"{source}  =>  {hypothesis}  [{mark}]")
    return lines


class Evaluator:
    """The evaluation run every `eval_every_steps`, with its data prepared once: the validation
    batches (this host's rows) and the sentences to decode."""

    def __init__(
        self, config: Any, tokenizer: Any, model: Transformer, mesh: Mesh, param_shardings: Any
    ) -> None:
        self.config, self.tokenizer, self.model, self.mesh = config, tokenizer, model, mesh
        self.eval_step = make_eval_step(
            model, mesh, param_shardings, label_smoothing=config.label_smoothing
        )
        split = config.data.eval_split
        self.batches = input_pipeline.eval_batches(
            config,
            tokenizer,
            split,
            batch_size=config.eval_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        if config.num_eval_batches >= 0:
            self.batches = self.batches[: config.num_eval_batches]
        pairs = input_pipeline.raw_examples(config.data, split)
        count = len(pairs) if config.num_bleu_examples < 0 else config.num_bleu_examples
        self.decoded_pairs = pairs[: max(count, config.num_sample_translations)]

    def __call__(self, params: Any) -> tuple[dict[str, float], list[str]]:
        """({'eval/loss': ..., 'eval/bleu': ...}, sample translation lines). Every host calls
        it: the loss batches and the decoding are computations over the whole mesh."""
        config = self.config
        summary = evaluate_loss(
            self.eval_step, params, self.batches, self.mesh, config.eval_batch_size
        )
        scalars = {f"eval/{name}": value for name, value in summary.items()}
        if not self.decoded_pairs:
            return scalars, []
        hypotheses = translate(
            self.model,
            params,
            self.tokenizer,
            [s for s, _ in self.decoded_pairs],
            config.decode,
            config.data.max_predict_length,
            self.mesh,
        )
        if config.num_bleu_examples != 0:
            references = [t for _, t in self.decoded_pairs]
            scalars["eval/bleu"] = corpus_bleu(hypotheses, references)
            scalars["eval/exact_match"] = exact_match(hypotheses, references)
        samples = sample_lines(self.decoded_pairs, hypotheses, config.num_sample_translations)
        return scalars, samples
