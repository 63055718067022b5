"""``smart-app assess`` loads no web framework, nor the standard modules that would cost it milliseconds
of start-up for nothing (smart_app/cli.py: it must start fast; smart_app/__init__.py on ``typing``). Checked
in a fresh interpreter, since this test process has long imported all of them for other tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: Standard modules an assessment does not need, each a few milliseconds to import: ``typing`` (annotations
#: only), ``importlib.resources`` (the package data are plain files), ``shutil`` (argparse's terminal width).
SLOW_TO_IMPORT = ("typing", "importlib.resources", "shutil", "zipfile", "tempfile")
BUNDLE = Path(__file__).resolve().parents[1] / "launch" / "data" / "patient-evance.json"
PROGRAM = f"""
import contextlib, io, json, sys
import smart_app.cli
argv = ["assess", "--bundle", {str(BUNDLE)!r}, "--json", "--as-of", "2026-11-24T12:00:00Z"]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = smart_app.cli.main(argv)
web = sorted(m for m in sys.modules if m == "flask" or m.startswith(("flask.", "smart_app.web", "werkzeug")))
slow = sorted(m for m in {SLOW_TO_IMPORT!r} if m in sys.modules)
classification = json.loads(out.getvalue())["classification"]
print(json.dumps({{"status": status, "classification": classification, "web": web, "slow": slow}}))
"""


def test_assess_imports_no_web_framework() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"status": 0, "classification": "red-flags", "web": [], "slow": []}
