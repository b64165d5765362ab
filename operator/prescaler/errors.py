"""Error kinds that callers map on purpose (exit codes, conditions, retries)."""


class PrescalerError(Exception):
    """Base class of every error prescaler raises on purpose."""


class InputError(PrescalerError):
    """Bad user input: a clear message, non-zero exit, nothing written."""


class DataUnavailable(PrescalerError):
    """The traffic store cannot be reached or has no usable data (transient)."""


class ConfigError(PrescalerError):
    """The configuration cannot start the process: one line per problem, each naming its flag or variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
