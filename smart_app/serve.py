"""Running the app in production: gunicorn, with an access log that never carries query strings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def serve(host: str, port: int, workers: int) -> None:
    """Run the app under gunicorn with ``workers`` processes; settings come from SMART_APP_* variables.

    With several workers (or several hosts) set SMART_APP_SESSION_REDIS_URL so they share sessions.
    """
    from gunicorn.app.base import BaseApplication

    from smart_app import create_app

    class GunicornApp(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", 4)
            self.cfg.set("timeout", 60)
            self.cfg.set("accesslog", "-")
            # Query strings carry OAuth codes and state: log the path only.
            self.cfg.set("access_log_format", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms')

        def load(self) -> Flask:
            return create_app()

    GunicornApp().run()
