"""The errors training reports to users as one line (train.py prints them and exits 1)."""


class ConfigError(ValueError):
    """The config cannot work: an unknown key, a bad value, or sizes that do not fit."""


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir (training/workdir_lock.py)."""


class DistributedSetupError(RuntimeError):
    """The processes of a multi-host job could not join each other (training/distributed.py)."""
