"""slmops tasks."""
