"""dpproxy: proxy package."""
