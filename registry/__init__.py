"""slmops registry."""
