"""Training: `train.py` parses flags and calls `training.loop.train_and_evaluate`.

Read in this order:
- `configuration`: checks a config (unknown keys, bad values), builds the model config.
- `partitioning`: the device mesh (data, fsdp, tensor) and the logical-axis rules.
- `state`: TrainState, the optax optimizer and learning-rate schedules.
- `accumulation`: gradient accumulation equal to one big batch (token-weighted).
- `loss`: label-smoothed cross entropy and token metrics, as sums.
- `steps`: the jitted, sharded train and evaluation steps.
- `setup`: mesh, model, optimizer, shardings and train step of a config (training and the
  benchmark build them here).
- `checkpointing`: the orbax checkpoint format and saving.
- `restoring`: reading checkpoints: parameters for decoding, the state for resuming.
- `metrics`: progress line, TensorBoard, metrics.jsonl.
- `evaluation`: validation loss, BLEU and exact match of decoded sentences.
- `distributed`: joining the other hosts (jax.distributed), saying which mode and why.
- `workdir_lock`: one run per workdir.
- `loop`: resume, train, evaluate, checkpoint; SIGTERM and divergence handling.
- `errors`: the errors reported to users as one line.
(`averaging`: the mean of the last N checkpoints, for decoding.)
"""
