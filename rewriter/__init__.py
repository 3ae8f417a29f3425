"""dpproxy: rewriter package."""
