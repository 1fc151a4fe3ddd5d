"""slmops infra."""
