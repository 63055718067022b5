import pytest

from smart_app import create_app
from smart_app.config import ConfigError


def test_dev_secret_refused_outside_debug_and_testing(tmp_path):
    with pytest.raises(ConfigError):
        create_app({"TESTING": False})


def test_testing_app_starts_with_dev_secret():
    app = create_app({"TESTING": True})
    assert app.testing
