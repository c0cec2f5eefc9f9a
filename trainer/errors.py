"""The errors a run ends with as one line on stderr, no traceback: the user's input, or training that cannot go
on. Every layer raises them; this module imports nothing, so the data layer does not pull in the config's."""


class UserError(Exception):
    """Bad input from the user; the CLI prints the message as one line and exits non-zero."""


class ConfigError(UserError):
    """A config file or key=value override that does not parse or check."""


class TrainingError(Exception):
    """Training cannot go on (diverged, cannot save); printed as one line."""
