"""Greedy and beam search against independent references on tiny random models: uncached argmax
decoding, brute-force enumeration of every output, and a plain-Python beam search in float64;
then the text entry point (order, buckets, truncation, blanks) with a fake tokenizer."""

import functools
import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from decoding import (
    EOS_ID,
    PAD_ID,
    beam_search,
    cached_model,
    cross_attention_weights,
    greedy_search,
    translate_texts,
    translate_tokens,
)
from decoding import translator as translator_module
from decoding.beam_search import EARLY_STOPPING_HORIZON, best_extensions
from decoding.reference import uncached_greedy_search
from decoding.settings import DecodeSettings
from model import Transformer, TransformerConfig


def random_model(vocab_size: int, max_length: int, seed: int, sharpness: float = 4.0):
    """A small random Transformer. The embedding (also the output layer) is scaled up by
    `sharpness` so that next-token distributions are peaked and outputs vary."""
    cfg = TransformerConfig(
        vocab_size=vocab_size,
        d_model=16,
        num_heads=2,
        head_dim=8,
        d_ff=32,
        num_encoder_layers=1,
        num_decoder_layers=2,
        max_length=max_length,
        dropout_rate=0.0,
    )
    model = Transformer(cfg)
    tokens = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(seed), tokens, tokens)["params"])
    params["source_embedding"]["embedding"] *= sharpness
    return model, params


def random_inputs(seed: int, batch: int, length: int, vocab_size: int) -> jnp.ndarray:
    """[batch, length] ids in [2, vocab) ending with EOS, rows of different lengths."""
    rng = np.random.default_rng(seed)
    inputs = np.zeros((batch, length), np.int32)
    for row in range(batch):
        n = rng.integers(2, length + 1)
        inputs[row, : n - 1] = rng.integers(2, vocab_size, n - 1)
        inputs[row, n - 1] = EOS_ID
    return jnp.asarray(inputs)


# ------------------------------------------------------------------ float64 scoring references


@functools.partial(jax.jit, static_argnames="config")
def teacher_forced_logits(params, sources, targets, config: TransformerConfig):
    return Transformer(config).apply({"params": params}, sources, targets)


def next_log_probs(model, params, source: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """Teacher-forced, no cache: log P(next token | prefix) for prefixes [n, t] of one source
    sentence -> [n, vocab] float64, PAD_ID at -inf (as the searches do)."""
    n, t = prefixes.shape
    rows = max(8, 1 << (n - 1).bit_length())  # few shapes, few compilations
    targets = np.zeros((rows, model.config.max_length), np.int32)
    targets[:n, :t] = prefixes
    # Position t's query is valid only if its target is non-zero; it never sees that target.
    targets[:n, t] = EOS_ID
    sources = np.repeat(source[None, :], rows, axis=0)
    logits = np.asarray(teacher_forced_logits(params, sources, targets, model.config), np.float64)
    log_probs = logits[:n, t] - logits[:n, t].max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))  # log-softmax in float64
    log_probs[:, PAD_ID] = -np.inf
    return log_probs


def sequence_log_prob(model, params, source: np.ndarray, sequences: list[tuple]) -> np.ndarray:
    """Total float64 log-probability of each output sequence (all of one length)."""
    seqs = np.asarray(sequences, np.int32)
    total = np.zeros(len(seqs))
    for t in range(seqs.shape[1]):
        total += next_log_probs(model, params, source, seqs[:, :t])[
            np.arange(len(seqs)), seqs[:, t]
        ]
    return total


def gnmt_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def brute_force(model, params, source, max_len: int, alpha: float) -> list[tuple[float, tuple]]:
    """Every output that ends with EOS within max_len tokens, scored log P / lp, best first."""
    vocab = model.config.vocab_size
    words = [t for t in range(vocab) if t not in (PAD_ID, EOS_ID)]
    scored = []
    for length in range(1, max_len + 1):
        seqs = [(*prefix, EOS_ID) for prefix in itertools.product(words, repeat=length - 1)]
        log_probs = sequence_log_prob(model, params, source, seqs)
        scored += [
            (lp / gnmt_penalty(length, alpha), s) for lp, s in zip(log_probs, seqs, strict=True)
        ]
    return sorted(scored, key=lambda item: -item[0])


def python_beam_search(
    model,
    params,
    source,
    beams: int,
    max_len: int,
    alpha: float,
    early_stopping: bool = False,
    horizon: int = EARLY_STOPPING_HORIZON,
):
    """The documented algorithm, written plainly and run to max_len, or with early_stopping
    until the best finished hypothesis beats the best alive one ended within `horizon` more
    steps (at most at max_len). Returns [(score, sequence)] best first, at most `beams`."""
    alive = [(0.0, ())]  # (log P, tokens), best first
    finished = []
    for t in range(max_len):
        prefixes = np.asarray([seq for _, seq in alive], np.int32).reshape(len(alive), t)
        log_probs = next_log_probs(model, params, source, prefixes)
        candidates = sorted(
            (
                (lp + log_probs[i, token], seq + (token,))
                for i, (lp, seq) in enumerate(alive)
                for token in range(log_probs.shape[1])
                if np.isfinite(log_probs[i, token])
            ),
            key=lambda item: -item[0],
        )[: 2 * beams]
        for lp, seq in candidates[:beams]:  # an ending counts if among the step's best `beams`
            if seq[-1] == EOS_ID:
                finished.append((lp / gnmt_penalty(t + 1, alpha), seq))
        alive = [c for c in candidates if c[1][-1] != EOS_ID][:beams]
        best_finished = max((score for score, _ in finished), default=-np.inf)
        horizon_penalty = gnmt_penalty(min(t + 1 + horizon, max_len), alpha)
        if early_stopping and alive and best_finished >= alive[0][0] / horizon_penalty:
            break
    if finished:
        return sorted(finished, key=lambda item: -item[0])[:beams]
    return [(lp / gnmt_penalty(max_len, alpha), seq) for lp, seq in alive]


# Jitted once per model config and static size; alpha and max_lengths are traced.
jit_greedy = jax.jit(greedy_search, static_argnames=("model", "max_decode_length"))
jit_beam = jax.jit(
    beam_search,
    static_argnames=("model", "beam_size", "max_decode_length", "num_hypotheses", "early_stopping"),
)


def unpadded(row) -> tuple:
    """An output row -> its tokens up to and including EOS."""
    ids = [int(i) for i in row]
    return tuple(ids[: ids.index(EOS_ID) + 1]) if EOS_ID in ids else tuple(i for i in ids if i)


# ------------------------------------------------------------------ greedy


@pytest.fixture(scope="module")
def small():
    return random_model(vocab_size=24, max_length=16, seed=1)


def test_cached_greedy_equals_uncached_argmax(small):
    model, params = small
    inputs = random_inputs(0, batch=6, length=9, vocab_size=24)
    cached = jit_greedy(model, params, inputs, 12)
    uncached = jax.jit(lambda p, x: uncached_greedy_search(model, p, x, 12))(params, inputs)
    cached, uncached = np.asarray(cached), np.asarray(uncached)
    np.testing.assert_array_equal(cached, uncached)
    assert len({unpadded(row) for row in cached}) > 1  # the rows really differ
    for row in cached:  # EOS kept, zeros after it, no padding before it
        ids = unpadded(row)
        assert PAD_ID not in ids and np.all(row[len(ids) :] == PAD_ID)


def test_greedy_respects_per_row_max_lengths(small):
    model, params = small
    inputs = random_inputs(1, batch=4, length=6, vocab_size=24)
    full = np.asarray(greedy_search(model, params, inputs, 10))
    limits = np.asarray([0, 1, 3, 10], np.int32)
    capped = np.asarray(greedy_search(model, params, inputs, 10, jnp.asarray(limits)))
    for row, limit in enumerate(limits):
        np.testing.assert_array_equal(capped[row, :limit], full[row, :limit])
        assert np.all(capped[row, limit:] == PAD_ID)


class EndsEarly(Transformer):
    """The same network with EOS made overwhelmingly likely at every step; every cached
    decoder step is reported to the Python list STEPS."""

    eos_bonus: float = 100.0

    def decode_step(self, token, inputs, cache):
        jax.debug.callback(lambda index: STEPS.append(int(index)), cache["index"])
        logits, cache = super().decode_step(token, inputs, cache)
        return logits.at[:, EOS_ID].add(self.eos_bonus), cache


STEPS: list[int] = []


def test_search_stops_early_when_every_row_has_finished(small):
    model, params = small
    ends_early = EndsEarly(model.config)
    inputs = random_inputs(2, batch=3, length=6, vocab_size=24)

    STEPS.clear()
    tokens = jax.block_until_ready(greedy_search(ends_early, params, inputs, 12))
    jax.effects_barrier()
    assert STEPS == [0]  # one step, not 12
    assert np.all(np.asarray(tokens)[:, 0] == EOS_ID) and np.all(np.asarray(tokens)[:, 1:] == 0)

    STEPS.clear()
    result = beam_search(ends_early, params, inputs, beam_size=2, alpha=0.6, max_decode_length=12)
    jax.block_until_ready(result)
    jax.effects_barrier()
    # Step 0 finishes [EOS]; step 1 finishes a second hypothesis, which fills the set; the
    # alive ones are then about 100 nats behind: no more steps.
    assert STEPS == [0, 1]
    assert np.all(np.asarray(result.sequences)[:, 0, 0] == EOS_ID)

    STEPS.clear()  # asked for the best one only, the search has it after step 0
    best = beam_search(
        ends_early, params, inputs, beam_size=2, alpha=0.6, max_decode_length=12, num_hypotheses=1
    )
    jax.block_until_ready(best)
    jax.effects_barrier()
    assert STEPS == [0]
    assert best.sequences.shape == (3, 1, 12) and best.scores.shape == (3, 1)
    np.testing.assert_array_equal(np.asarray(best.sequences[:, 0]), result.sequences[:, 0])


# ------------------------------------------------------------------ beam search


@pytest.mark.parametrize("seed", [3])
def test_beam_size_one_with_alpha_zero_is_greedy(small, seed):
    model, params = small
    inputs = random_inputs(seed, batch=5, length=7, vocab_size=24)
    greedy = jit_greedy(model, params, inputs, 12)
    beam = jit_beam(model, params, inputs, beam_size=1, alpha=0.0, max_decode_length=12)
    np.testing.assert_array_equal(np.asarray(beam.sequences[:, 0]), np.asarray(greedy))
    # ... and translate_tokens with beam_size=1 is the greedy path.
    api = translate_tokens(model, params, inputs, beam_size=1, alpha=0.6, max_decode_length=12)
    np.testing.assert_array_equal(np.asarray(api), np.asarray(greedy))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_exhaustive_beam_search_finds_the_brute_force_best(alpha):
    """Vocabulary 6 (4 words + EOS + PAD), outputs of at most 3 tokens: 21 outputs end with EOS.
    With 80 beams every candidate of every step is kept, so the search is exact."""
    model, params = random_model(vocab_size=6, max_length=4, seed=5, sharpness=2.0)
    inputs = random_inputs(6, batch=3, length=4, vocab_size=6)
    result = jit_beam(model, params, inputs, beam_size=80, alpha=alpha, max_decode_length=3)
    for sentence in range(inputs.shape[0]):
        source = np.asarray(inputs[sentence])
        expected = brute_force(model, params, source, max_len=3, alpha=alpha)
        assert len(expected) == 21
        scores = np.asarray(result.scores[sentence])
        np.testing.assert_allclose(scores[:21], [s for s, _ in expected], atol=1e-4)
        assert np.all(scores[21:] == -np.inf)  # nothing else can end
        got = [unpadded(row) for row in np.asarray(result.sequences[sentence, :21])]
        for rank, (score, sequence) in enumerate(expected):
            if rank == 0 or expected[rank - 1][0] - score > 1e-4:  # skip near-ties
                assert got[rank] == sequence


@pytest.mark.parametrize(
    "beams, alpha, max_len, seed, early_stopping, num_hypotheses",
    [
        (2, 0.6, 5, 7, False, None),
        (4, 0.0, 6, 8, False, None),
        (4, 1.0, 6, 9, False, None),
        (3, 1.0, 7, 10, True, None),
        (3, 2.0, 8, 10, True, None),  # the horizon matters: 1 step instead of 3 fails
        (2, 0.6, 5, 7, False, 1),
        (4, 1.0, 6, 9, False, 1),
        (3, 2.0, 7, 11, False, 1),
        (4, 0.0, 6, 9, False, 2),  # fails if the search stops on its best hypothesis only
    ],
)
def test_beam_search_matches_plain_python_beam_search(
    beams, alpha, max_len, seed, early_stopping, num_hypotheses
):
    """Same hypotheses and scores as the float64 reference, which runs every step (the exact
    rule stops only when that changes nothing) or stops where the early rule says. With
    num_hypotheses, the search stops once nothing can enter its n best, which are then the
    reference's n best."""
    model, params = random_model(vocab_size=8, max_length=8, seed=seed, sharpness=3.0)
    inputs = random_inputs(seed, batch=4, length=5, vocab_size=8)
    result = jit_beam(
        model,
        params,
        inputs,
        beam_size=beams,
        alpha=alpha,
        max_decode_length=max_len,
        num_hypotheses=num_hypotheses,
        early_stopping=early_stopping,
    )
    assert result.sequences.shape == (4, num_hypotheses or beams, max_len)
    for sentence in range(inputs.shape[0]):
        expected = python_beam_search(
            model, params, np.asarray(inputs[sentence]), beams, max_len, alpha, early_stopping
        )[:num_hypotheses]
        scores = np.asarray(result.scores[sentence])
        np.testing.assert_allclose(scores[: len(expected)], [s for s, _ in expected], atol=1e-4)
        got = [unpadded(row) for row in np.asarray(result.sequences[sentence])]
        assert got[: len(expected)] == [seq for _, seq in expected]


@pytest.mark.parametrize(
    "vocab, beams, chunk", [(1000, 4, 64), (130, 2, 16), (64, 4, 8), (40, 3, 64)]
)
def test_best_extensions_equal_a_full_sort_in_float64(vocab, beams, chunk):
    """The 2·beams best (beam, token) of each sentence by alive + log_softmax, PAD excluded:
    the same as a stable float64 sort of every extension, ties (to the lower beam, then the
    lower token), empty (-inf) beams and a PAD that dominates the normaliser included."""
    rng = np.random.default_rng(vocab)
    batch, k = 4, 2 * beams
    logits = rng.normal(size=(batch, beams, vocab))
    logits[0] = rng.integers(0, 6, vocab)  # sentence 0: every beam the same, many ties
    logits[1, :, : vocab - 3] = -30.0  # sentence 1: three likely tokens, at the end
    logits[3, :, PAD_ID] = 200.0  # sentence 3: PAD by far the likeliest (exp overflows without
    #                               its logit in the normaliser's maximum), and never chosen
    alive = rng.normal(size=(batch, beams)) - 1.0
    alive[0] = -2.0
    alive[2, 1:] = -np.inf  # sentence 2: one live beam (as at the first step)
    logits, alive = logits.astype(np.float32), alive.astype(np.float32)

    values, parents, tokens = best_extensions(
        jnp.asarray(logits.reshape(batch * beams, vocab)), jnp.asarray(alive), k, chunk
    )
    log_probs = logits.astype(np.float64)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))  # PAD in the normaliser
    log_probs[..., PAD_ID] = -np.inf
    flat = (alive[..., None] + log_probs).reshape(batch, beams * vocab)
    order = np.argsort(-flat, axis=-1, kind="stable")[:, :k]
    np.testing.assert_allclose(values, np.take_along_axis(flat, order, -1), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(parents), order // vocab)
    np.testing.assert_array_equal(np.asarray(tokens), order % vocab)
    assert set(np.asarray(tokens)[1]) <= {vocab - 3, vocab - 2, vocab - 1}  # from the last chunk


@pytest.mark.parametrize("vocab", [8000, 1000, 37, 64])
def test_most_probable_tokens_equal_numpy_argmax(vocab):
    """Greedy's choice through chunk maxima is np.argmax with PAD excluded: ties to the lower
    token (within a chunk and across chunks), a PAD that dominates, a vocabulary that is not a
    whole number of chunks, and a winner in the padded last chunk."""
    rng = np.random.default_rng(vocab)
    logits = rng.normal(size=(6, vocab)).astype(np.float32)
    logits[0] = rng.integers(0, 3, vocab)  # many ties
    logits[1, [PAD_ID, 3]] = 50.0, 9.0  # PAD the likeliest, never chosen, in the best chunk
    logits[2, [vocab - 1, vocab // 2]] = 9.0  # a tie across chunks: the lower one wins
    logits[3, vocab - 1] = 9.0  # the last token, in the last (padded) chunk
    logits[4, [1, 2]] = 9.0  # a tie in PAD's chunk, next to PAD
    expected = np.where(np.arange(vocab) == PAD_ID, -np.inf, logits).argmax(-1)
    got = jax.jit(cached_model.most_probable_tokens)(jnp.asarray(logits))
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_beam_search_on_sharded_parameters_matches_one_device(small):
    model, params = small
    inputs = random_inputs(11, batch=4, length=6, vocab_size=24)
    expected = translate_tokens(model, params, inputs, beam_size=3, alpha=0.6, max_decode_length=10)
    mesh = Mesh(np.array(jax.devices()[:2]), ("model",))

    def shard(x):  # split every parameter's first axis when it divides evenly
        spec = P("model") if x.shape and x.shape[0] % 2 == 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    sharded = jax.tree.map(shard, params)
    assert any(len(x.sharding.device_set) == 2 for x in jax.tree.leaves(sharded))
    got = translate_tokens(model, sharded, inputs, beam_size=3, alpha=0.6, max_decode_length=10)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_rows_split_over_devices_holding_all_parameters_decode_alone(small, monkeypatch, beam_size):
    """Each of 4 devices, holding every parameter, decodes its 4 rows in its own stages: the
    same outputs as one device, the rows kept on their devices, and no collective in the
    compiled program (nothing moves between devices). With the parameters split over the
    devices too, the batch is decoded by one program over all of them, as before."""
    model, params = small
    inputs = random_inputs(12, batch=16, length=6, vocab_size=24)
    limits = np.asarray([10, 4, 7, 10] * 4, np.int32)
    decode = functools.partial(
        translate_tokens, model, beam_size=beam_size, alpha=0.6, max_decode_length=10
    )
    expected = np.asarray(decode(params, inputs, max_lengths=limits))
    assert len({unpadded(row) for row in expected}) > 4  # the rows really differ

    mesh = Mesh(np.array(jax.devices()[:4]), ("rows",))
    rows = NamedSharding(mesh, P("rows"))
    split_inputs, split_limits = jax.device_put(inputs, rows), jax.device_put(limits, rows)
    replicated = jax.device_put(params, NamedSharding(mesh, P()))
    per_device = []
    original = translator_module._translate_tokens

    def recording(*args, **kwargs):
        if kwargs.get("rows_of") is not None:
            per_device.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(translator_module, "_translate_tokens", recording)
    got = decode(replicated, split_inputs, max_lengths=split_limits)
    assert len(per_device) == 1
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert got.sharding.shard_shape(got.shape)[0] == 4 and len(got.sharding.device_set) == 4

    args, kwargs = per_device[0]
    program = original.lower(*args, **kwargs).compile().as_text()
    for collective in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
        assert collective not in program

    def split_first_axis(x):
        spec = P("rows") if x.shape and x.shape[0] % 4 == 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    sharded = jax.tree.map(split_first_axis, params)
    got = decode(sharded, split_inputs, max_lengths=split_limits)
    assert len(per_device) == 1  # not decoded per device
    np.testing.assert_array_equal(np.asarray(got), expected)


# ------------------------------------------------------------------ texts


class LetterTokenizer:
    """a..z -> 2..27, EOS appended; decode stops at EOS."""

    def encode(self, text: str) -> list[int]:
        return [2 + ord(c) - ord("a") for c in text if c.isalpha()] + [EOS_ID]

    def decode(self, ids) -> str:
        letters = []
        for i in ids:
            if i == EOS_ID:
                break
            letters.append(chr(ord("a") + i - 2) if i >= 2 else "?")
        return "".join(letters)


def test_translate_texts_keeps_order_buckets_truncates_and_skips_blanks(small, monkeypatch, caplog):
    model, params = small  # max_length 16
    tokenizer = LetterTokenizer()
    texts = ["abc", "", "hijklmnopq", "de", "  ", "uvwxyz" * 5, "fg", "a"]
    calls = []
    real_translate_tokens = translator_module.translate_tokens

    def recording(model, params, inputs, **kwargs):
        calls.append((inputs.shape, kwargs["max_decode_length"], np.asarray(inputs)))
        return real_translate_tokens(model, params, inputs, **kwargs)

    monkeypatch.setattr(translator_module, "translate_tokens", recording)
    with caplog.at_level(logging.WARNING):
        outputs = translate_texts(
            model,
            params,
            tokenizer,
            texts,
            DecodeSettings(strategy="greedy", beam_size=1, max_extra_length=3, batch_size=3),
            max_input_length=12,
        )

    assert "1 of 8 inputs were longer than 12 tokens" in caplog.text
    assert outputs[1] == "" and outputs[4] == ""
    # 6 non-blank inputs, sorted by length, in batches of 3 padded to 3 rows:
    # lengths 2,3,3 -> bucket 8; 4,12,12 -> bucket 12 (the cap).
    assert [(shape, length) for shape, length, _ in calls] == [((3, 8), 11), ((3, 12), 15)]
    truncated_row = [row for row in calls[1][2] if row[0] == tokenizer.encode("u")[0]][0]
    assert truncated_row[-1] == EOS_ID and len(truncated_row) == 12  # EOS kept last

    # Each output is what greedy search gives that sentence in a plain batch of all of them,
    # with its own length limit: input length + max_extra_length tokens.
    all_ids = [tokenizer.encode(t) for t in texts if t.strip()]
    all_ids = [ids[:11] + [EOS_ID] if len(ids) > 12 else ids for ids in all_ids]
    inputs = np.zeros((len(all_ids), 12), np.int32)
    for row, ids in enumerate(all_ids):
        inputs[row, : len(ids)] = ids
    limits = jnp.asarray([len(ids) + 3 for ids in all_ids], jnp.int32)
    alone = np.asarray(jit_greedy(model, params, jnp.asarray(inputs), 16, limits))
    expected = [tokenizer.decode([int(i) for i in row if i]) for row in alone]
    assert [o for t, o in zip(texts, outputs, strict=True) if t.strip()] == expected
    assert all(len(o) <= len(ids) + 3 for o, ids in zip(expected, all_ids, strict=True))
    assert len({o for o in outputs if o}) > 1


def test_translate_texts_with_beam_search_and_only_blank_lines(small):
    model, params = small
    tokenizer = LetterTokenizer()
    settings = DecodeSettings(beam_size=4, alpha=0.6, max_extra_length=5, batch_size=4)
    blanks = translate_texts(model, params, tokenizer, ["", " "], settings, 16)
    assert blanks == ["", ""]
    texts = ["abcdefghi", "efghij", "k"]  # bucket 8 then 16, in batches of 2
    settings = DecodeSettings(beam_size=4, alpha=0.6, max_extra_length=5, batch_size=2)
    outputs = translate_texts(model, params, tokenizer, texts, settings, 16)
    # Beam search on one plain batch of all three, each with its own length limit.
    inputs = np.zeros((3, 10), np.int32)
    for row, text in enumerate(texts):
        ids = tokenizer.encode(text)
        inputs[row, : len(ids)] = ids
    limits = jnp.asarray([len(t) + 1 + 5 for t in texts], jnp.int32)
    best = translate_tokens(
        model, params, inputs, beam_size=4, alpha=0.6, max_decode_length=15, max_lengths=limits
    )
    assert outputs == [tokenizer.decode([int(i) for i in row if i]) for row in np.asarray(best)]


def test_bad_arguments_are_clear_errors(small):
    model, params = small
    inputs = random_inputs(0, batch=1, length=4, vocab_size=24)
    with pytest.raises(ValueError, match="max_decode_length=17"):
        translate_tokens(model, params, inputs, beam_size=2, alpha=0.6, max_decode_length=17)
    with pytest.raises(ValueError, match="beam_size"):
        translate_tokens(model, params, inputs, beam_size=0, alpha=0.6, max_decode_length=8)
    with pytest.raises(ValueError, match=r"num_hypotheses must be 1 to beam_size \(2\), got 3"):
        beam_search(
            model, params, inputs, beam_size=2, alpha=0.6, max_decode_length=8, num_hypotheses=3
        )
    with pytest.raises(ValueError, match="max_input_length=20"):
        translate_texts(
            model,
            params,
            LetterTokenizer(),
            ["a"],
            DecodeSettings(strategy="greedy", beam_size=1, max_extra_length=2, batch_size=1),
            max_input_length=20,
        )


def test_cross_attention_weights_of_one_sentence(small):
    model, params = small
    weights = cross_attention_weights(model, params, [5, 6, 7, 8, EOS_ID], [9, 10, EOS_ID])
    assert weights.shape == (2, 2, 3, 5)  # [layers, heads, target, source]
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    assert np.abs(weights[0] - weights[1]).max() > 1e-3  # one panel per layer, not a copy
