"""The errors of serve/ that end in one line: bad input to a sampler, and what keeps a server from starting."""


class SamplerError(ValueError):
    """Bad input (model file, option, prime, constraint); the CLIs print it as one line."""


class ServerStartError(ValueError):
    """A server cannot start: a bad flag, or an address it cannot listen on; its command prints one line."""
