"""The sandbox EHR for testing and demonstrating the back-mice app: its own distribution,
``back-mice-sandbox`` (``launch/pyproject.toml``). The app never imports this package."""
