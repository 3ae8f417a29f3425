"""dpproxy: accounting package."""
