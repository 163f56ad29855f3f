"""Our weights in someone else's layout."""
