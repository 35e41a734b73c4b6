"""Multi30k (WMT16 multimodal task 1) English->German: 29k caption pairs, a small model.

The raw files (train/val/test_2016_flickr .en.gz/.de.gz) are read from `data.dir`, by default
../shared/data/multi30k next to the repository; point it elsewhere with
`--config.data.dir=/path/to/multi30k`. A first recipe for a small corpus: a narrow, shallow
model with more dropout than the paper, a joint 8000-piece BPE vocabulary.
"""

from pathlib import Path

import ml_collections

from configs import base

# ../shared/data/multi30k relative to the repository root, wherever the command runs from.
DEFAULT_MULTI30K_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()

    config.data.source = "text_files"  # SPLIT.LANG.gz files in data.dir
    config.data.dir = str(DEFAULT_MULTI30K_DIR)  # folder of the raw Multi30k files
    config.data.source_lang = "en"  # English captions...
    config.data.target_lang = "de"  # ...into German
    config.data.train_split = "train"  # train.en.gz / train.de.gz: 29,000 pairs
    config.data.eval_split = "val"  # val.*.gz: 1,014 pairs, loss and BLEU during training
    config.data.test_split = "test_2016_flickr"  # 1,000 pairs, the usual "test2016"
    config.data.vocab_size = 8000  # joint BPE; ~16 pieces per sentence with EOS
    config.data.vocab_model_type = "bpe"  # sentencepiece BPE, as in the paper
    config.data.vocab_sample_size = 58_000  # every training sentence, both languages
    config.data.vocab_character_coverage = 1.0  # a small corpus: keep every character
    config.data.max_length = 64  # tokens per packed row: ~4 pairs; longest pair is ~56 tokens
    config.data.max_eval_length = 64  # evaluation rows (nothing in val/test is longer)
    config.data.max_predict_length = 64  # longest source fed to the decoder

    config.model.d_model = 256  # narrow: 29k pairs do not feed a 512-wide model
    config.model.num_heads = 4  # 4 heads of 64
    config.model.head_dim = 64  # d_model / heads
    config.model.d_ff = 1024  # 4 x d_model, as in the paper
    config.model.num_encoder_layers = 3  # shallow: small corpus
    config.model.num_decoder_layers = 3  # shallow: small corpus
    config.model.dropout_rate = 0.2  # more regularization than the paper's 0.1 on small data
    config.model.attention_dropout_rate = 0.1  # dropout on attention weights, same reason
    config.model.relu_dropout_rate = 0.1  # dropout in the feed-forward layer, same reason

    config.batch_size = 64  # rows of 64 tokens: ~3.8k target tokens per step, ~125 steps/epoch
    config.num_train_steps = 5000  # about 40 epochs; ~75 min on a 2-core CPU
    config.learning_rate = 1.0  # rsqrt schedule multiplier: peak ~2e-3 for d_model 256
    config.warmup_steps = 1000  # a fifth of the run
    config.label_smoothing = 0.1  # paper value
    config.log_every_steps = 50  # progress line period
    config.eval_every_steps = 500  # validation loss and BLEU period
    config.eval_batch_size = 64  # rows per evaluation batch
    config.num_bleu_examples = -1  # the whole validation set (1,014 sentences)
    config.checkpoint_every_steps = 250  # save period: ~2 epochs, for averaging the last few
    config.keep_checkpoints = 10  # newest kept: average the last 5-10 (last 1250-2500 steps)
    config.decode.beam_size = 5  # chosen on val (beam 4 and 5 within 0.1 BLEU)
    config.decode.alpha = 1.0  # chosen on val: 0.6 made outputs short (BP 0.95)
    config.decode.max_extra_length = 20  # captions: output about as long as the input
    config.decode.batch_size = 64  # sentences per decoding batch
    return config
