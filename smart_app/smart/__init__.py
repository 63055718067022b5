"""smart package."""
