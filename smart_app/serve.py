"""Running the app in production: gunicorn, with an access log that never carries query strings."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask
    from gunicorn.app.base import BaseApplication


def settle_heap(worker: object = None) -> None:
    """Compile the app's page templates, collect once, then freeze what is left (Python ``gc.freeze``):
    the app, its criteria releases, terminology and templates live as long as the worker, so no later
    collection walks them, and a full collection during a request costs the objects made since start-up,
    not the whole heap. Run by gunicorn in each worker once it has loaded the app (``post_worker_init``,
    the app is the worker's ``wsgi``), so no clinician's first page waits for a template to compile."""
    app = getattr(worker, "wsgi", None)
    environment = getattr(app, "jinja_env", None)
    if environment is not None:
        for name in environment.list_templates(extensions=["html"]):
            environment.get_template(name)
    gc.collect()
    gc.freeze()


def gunicorn_app(host: str, port: int, workers: int) -> BaseApplication:
    """The gunicorn application serving the app with ``workers`` processes of 4 threads each."""
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
            self.cfg.set("post_worker_init", settle_heap)

        def load(self) -> Flask:
            return create_app()

    return GunicornApp()


def serve(host: str, port: int, workers: int) -> None:
    """Run the app under gunicorn with ``workers`` processes; settings come from SMART_APP_* variables.

    With several workers (or several hosts) set SMART_APP_SESSION_REDIS_URL so they share sessions.
    """
    gunicorn_app(host, port, workers).run()
