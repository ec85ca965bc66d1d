"""Errors that name what is wrong, raised on bad input from users or peers."""


class FedPeftError(Exception):
    """Base class: a problem the user can fix, reported without a traceback by the CLI."""


class DataError(FedPeftError):
    """The user's dataset cannot be used as given."""


class ConfigError(FedPeftError):
    """A configuration value is missing or out of range."""


class IntegrityError(FedPeftError):
    """Content does not match the hash or signature it claims."""
