"""`python -m model --config=configs/base.py`: the parameter table by module, and the total."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from absl import app
from ml_collections import config_flags

from model.param_count import count_parameters, format_parameter_table

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/base.py.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/base.py")
    with jax.default_device(jax.devices("cpu")[0]):
        rows = count_parameters(config.model)
    print(format_parameter_table(rows))


if __name__ == "__main__":
    app.run(main)
