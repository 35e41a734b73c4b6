"""The paper's big model (Table 3): d_model 1024, d_ff 4096, 16 heads, dropout 0.3."""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config()
    config.model.d_model = 1024  # d_model
    config.model.num_heads = 16  # h
    config.model.head_dim = 64  # d_k = 1024 / 16
    config.model.d_ff = 4096  # d_ff
    config.model.dropout_rate = 0.3  # P_drop (paper: 0.3 for EN-DE big)
    config.num_train_steps = 300_000  # paper: 300k steps for big
    config.keep_checkpoints = 20  # paper averages the last 20 for big
    return config
