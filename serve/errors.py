"""The one error type of serve/: bad input from a user, said in one line."""


class SamplerError(ValueError):
    """Bad input (model file, option, prime, constraint); the CLIs print it as one line."""
