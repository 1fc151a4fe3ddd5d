"""slmops flows."""
