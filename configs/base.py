"""The paper's base model (Vaswani et al. 2017, Table 3) on WMT14 English->German.

Every other config starts from this one and says what it changes; this file declares and
comments every field (training/configuration.py rejects keys it does not have). Sections:
- config.data: the corpus, vocabulary, lengths and packing (input_pipeline.py, data/);
- config.model: the network (model/TransformerConfig; 'auto' dtype resolved per platform);
- top level: training (training/loop.py: batch, steps, schedule, optimizer, mesh, periods);
- config.decode: decoding.DecodeSettings (translate.py, training's evaluation, serve.py,
  export.py; their flags override it).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # ---------------------------------------------------------------- data
    data = config.data = ml_collections.ConfigDict()
    data.source = "tfds"  # 'numbers' (generated), 'text_files' (your corpus) or 'tfds'
    data.tfds_name = "wmt14_translate/de-en"  # TFDS dataset name, for source='tfds'
    data.tfds_data_dir = ""  # where TFDS datasets are built ('' = TFDS's default)
    data.dir = ""  # folder of SPLIT.LANG[.gz] files, for source='text_files'
    data.source_lang = "en"  # translate from this language (numbers: a num2words code)...
    data.target_lang = "de"  # ...into this one (named explicitly: TFDS keys run de->en)
    data.train_split = "train"  # split names; for text_files, the file stem (train.en.gz)
    data.eval_split = "validation"  # development split: loss, BLEU during training
    data.test_split = "test"  # held-out split for final scores
    data.numbers_train_size = 100_000  # numbers corpus: training examples, equal per digit count
    data.numbers_eval_size = 1_000  # numbers corpus: validation examples
    data.numbers_test_size = 1_000  # numbers corpus: test examples
    data.numbers_max = 999_999  # numbers corpus: largest number drawn
    data.numbers_seed = 0  # numbers corpus: generation seed (same seed, same data)
    data.prepared_dir = ".cache/data"  # where generated/text corpora are prepared (array_record)
    data.vocab_size = 37000  # joint sentencepiece vocabulary (paper: 37000 shared BPE)
    data.vocab_model_type = "bpe"  # sentencepiece model type: 'bpe' or 'unigram'
    data.vocab_sample_size = 1_000_000  # sentences sampled to train the tokenizer
    data.vocab_character_coverage = 0.9995  # characters covered by pieces; the rarest -> unk
    data.max_length = 256  # tokens per packed row; longer examples are dropped
    data.max_eval_length = 256  # evaluation: longer examples are truncated
    data.max_predict_length = 256  # prediction: longest source fed to the decoder
    data.pack = True  # pack several examples per training row
    # Virtual shards of the training stream (data/shards.py): each host packs V / hosts of them,
    # and a run resumes on any host count dividing V. Must divide batch_size; 0 = batch_size.
    data.virtual_shards = 0
    data.prefetch_batches = 2  # batches prepared ahead in a background thread (0 = none)

    # ---------------------------------------------------------------- model
    model = config.model = ml_collections.ConfigDict()
    model.vocab_size = data.get_ref("vocab_size")  # follows data.vocab_size
    model.d_model = 512  # d_model: width of embeddings and residual stream
    model.num_heads = 8  # h: attention heads
    model.head_dim = 64  # d_k = d_v = d_model / h
    model.d_ff = 2048  # d_ff: feed-forward hidden width
    model.num_encoder_layers = 6  # N (encoder)
    model.num_decoder_layers = 6  # N (decoder)
    model.dropout_rate = 0.1  # P_drop: embeddings and every sub-layer output
    model.attention_dropout_rate = 0.0  # dropout on attention weights (paper: none)
    model.relu_dropout_rate = 0.0  # dropout on the feed-forward hidden layer (paper: none)
    model.max_length = data.get_ref("max_length")  # longest position to embed
    model.position_embedding = "sinusoidal"  # 'sinusoidal' (paper) or 'learned'
    model.norm_position = "post"  # 'post' (paper) or 'pre' LayerNorm
    model.share_embeddings = True  # source and target share one embedding table
    model.tie_output_projection = True  # softmax weights = embedding table (paper)
    model.layer_norm_epsilon = 1e-6  # LayerNorm epsilon
    model.dtype = "auto"  # compute: 'auto' = bfloat16 on GPU/TPU, float32 on CPU; or explicit
    model.param_dtype = "float32"  # parameter storage dtype
    model.remat = False  # recompute layer activations in backward (saves memory)
    # 'xla', 'cudnn' (fused, NVIDIA GPUs, bf16), 'splash' (fused, TPUs) or 'auto' (the platform's
    # fused kernel if the model can use it, else xla; logged). See docs/accelerators.md.
    model.attention_implementation = "xla"

    # ---------------------------------------------------------------- training
    config.seed = 0  # parameter init, dropout and data order
    config.batch_size = 96  # global rows per step (x data.max_length tokens; paper ~25k)
    config.num_train_steps = 100_000  # paper: 100k steps for base
    config.learning_rate = 1.0  # rsqrt: multiplier on the formula; cosine/constant: peak rate
    # 'rsqrt': d_model^-0.5*min(t^-0.5, t*warmup^-1.5) (paper); 'cosine': warm-up then cosine
    # decay to 0; 'constant': warm-up then flat. t counts optimizer updates.
    config.schedule = "rsqrt"
    config.warmup_steps = 4000  # paper: 4000
    config.adam_b1 = 0.9  # Adam beta1
    config.adam_b2 = 0.98  # Adam beta2 (paper: 0.98)
    config.adam_eps = 1e-9  # Adam epsilon (paper: 1e-9)
    config.weight_decay = 0.0  # decoupled weight decay (AdamW); 0 = plain Adam
    config.grad_clip_norm = 0.0  # clip gradients to this global norm; 0 = off
    # Micro-batches accumulated per update, weighted by their tokens: the update of one batch
    # holding them all. Steps (num_train_steps, the *_every_steps) count batches of batch_size
    # rows; the schedule counts updates.
    config.grad_accum_steps = 1
    config.label_smoothing = 0.1  # epsilon_ls
    config.mesh_shape = (-1, 1, 1)  # devices along (data, fsdp, tensor); -1 = the rest
    config.log_every_steps = 100  # progress line, TensorBoard and metrics.jsonl
    # Train steps dispatched ahead of the device (0 = no bound). SIGTERM is noticed at a step
    # boundary, so it is honoured within about this many step times plus the save.
    config.max_steps_in_flight = 2
    config.eval_every_steps = 5000  # validation loss/accuracy and BLEU
    config.num_eval_batches = -1  # validation batches per evaluation (-1 = whole split)
    config.eval_batch_size = 64  # global rows per evaluation/prediction batch
    config.num_bleu_examples = 1000  # validation sentences decoded for BLEU (-1 = all)
    config.num_sample_translations = 3  # sample translations printed per evaluation
    config.checkpoint_every_steps = 5000  # save period
    config.keep_checkpoints = 20  # newest checkpoints kept (paper averages the last 5)

    # ---------------------------------------------------------------- decoding
    decode = config.decode = ml_collections.ConfigDict()
    decode.beam_size = 4  # hypotheses per sentence (paper: 4); 1 = greedy search
    decode.alpha = 0.6  # GNMT length penalty ((5 + len) / 6)^alpha; paper: 0.6
    decode.max_extra_length = 50  # output may be up to input length + this (paper: 50)
    decode.batch_size = 64  # sentences decoded together
    decode.early_stopping = False  # beam: exact stop; True stops sooner (faster, not exact)

    return config
