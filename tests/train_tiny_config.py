"""A tiny training setup for the train.py tests: the numbers corpus cut down, a one-layer model,
a few steps. Tests add --config.FIELD overrides (workdir-specific paths, step counts, meshes)."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data.numbers_train_size = 2000  # enough for a few hundred tiny steps
    config.data.numbers_eval_size = 64  # validation sentences
    config.data.numbers_test_size = 64  # test sentences
    config.data.vocab_size = 128  # number words are few
    config.data.max_length = 32  # tokens per packed row
    config.data.max_eval_length = 32
    config.data.max_predict_length = 32
    config.data.prefetch_batches = 0  # no background thread: simpler to kill and restart

    config.model.d_model = 32
    config.model.num_heads = 4
    config.model.head_dim = 8
    config.model.d_ff = 64
    config.model.num_encoder_layers = 1
    config.model.num_decoder_layers = 1

    config.batch_size = 8  # divisible by every mesh the tests use
    config.num_train_steps = 3
    config.warmup_steps = 10
    config.log_every_steps = 1
    config.eval_every_steps = 0  # evaluate only at the end
    config.num_eval_batches = 1
    config.eval_batch_size = 8
    config.num_bleu_examples = 0  # no decoding: fast
    config.num_sample_translations = 2
    config.checkpoint_every_steps = 100
    config.keep_checkpoints = 3
    config.decode.beam_size = 1
    config.decode.batch_size = 8
    config.decode.max_extra_length = 5
    return config
