"""Settings: defaults < TOML < environment, and a bad value is one clear line with exit code 2."""

import os
import textwrap

import pytest

from gateway.settings import ConfigError, load_settings
from tests.helpers import trunkline


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("TRUNKLINE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_environment_beats_toml_beats_defaults(tmp_path, clean_env):
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        textwrap.dedent("""
        [http]
        port = 9000
        host = "0.0.0.0"
        [log]
        level = "debug"
    """)
    )
    clean_env.setenv("TRUNKLINE_HTTP__PORT", "9100")
    s = load_settings(cfg)
    assert s.http.port == 9100  # env wins
    assert s.http.host == "0.0.0.0"  # from TOML
    assert s.log.level == "debug"
    assert s.http.shutdown_timeout == 30.0  # default


def test_config_file_from_environment_variable(tmp_path, clean_env):
    cfg = tmp_path / "t.toml"
    cfg.write_text("[http]\nport = 9200\n")
    clean_env.setenv("TRUNKLINE_CONFIG", str(cfg))
    assert load_settings().http.port == 9200


def test_unknown_key_in_toml_is_named(tmp_path, clean_env):
    cfg = tmp_path / "t.toml"
    cfg.write_text("[http]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"http\.prot .*no such setting"):
        load_settings(cfg)


def test_example_config_is_valid_and_documents_every_key(clean_env):
    from pathlib import Path

    example = Path(__file__).parents[2] / "config" / "trunkline.example.toml"
    settings = load_settings(example)
    text = example.read_text()

    def documented(table: str, values: dict) -> None:
        assert f"[{table}]" in text or f"[{table}." in text, (
            f"[{table}] missing from the example config"
        )
        for key, value in values.items():
            if isinstance(value, dict):
                documented(f"{table}.{key}", value)
            else:
                assert f"{key} =" in text, f"{table}.{key} undocumented"

    for section, values in settings.model_dump().items():
        documented(section, values)


def test_bad_value_exits_2_with_one_line_naming_the_key(clean_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNKLINE_")}
    env["TRUNKLINE_HTTP__PORT"] = "abc"
    proc = trunkline("check-config", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "http.port" in lines[0] and "TRUNKLINE_HTTP__PORT" in lines[0] and "'abc'" in lines[0]
    assert "integer" in lines[0]
    assert "Traceback" not in proc.stderr


def test_check_config_redacts_passwords(clean_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNKLINE_")}
    env["TRUNKLINE_DATABASE__URL"] = "postgresql://app:hunter2@db.example:5432/trunkline"
    proc = trunkline("check-config", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stdout
    assert "postgresql://app:***@db.example:5432/trunkline" in proc.stdout


def test_usage_error_exits_2(clean_env):
    proc = trunkline("run", "--role", "nonsense", env=dict(os.environ))
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
