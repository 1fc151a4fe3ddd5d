"""Registry errors."""

from tasks.errors import SlmopsError


class RegistryError(SlmopsError):
    """Unknown model name, version or alias; the message lists what exists."""
