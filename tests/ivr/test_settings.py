"""The [ivr] settings section: used by the IVR's parts, and a bad value stops start-up with one
line naming the key (as every section does)."""

from __future__ import annotations

import os

import pytest

from gateway.settings import ConfigError, load_settings
from tests.helpers import trunkline


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"session_ttl": 10}, "ivr.session_ttl"),  # below a minute: sessions would vanish
        ({"lease": 0}, "ivr.lease"),
        ({"command_timeout": -1}, "ivr.command_timeout"),
        ({"overflow_sound": 'x" ; HANGUP'}, "ivr.overflow_sound"),  # would break the line
        ({"overflow_sound": "busy now"}, "ivr.overflow_sound"),
        ({"silence": ""}, "ivr.silence"),
        ({"recordings_dir": "../x y"}, "ivr.recordings_dir"),
        ({"lease_time": 3}, "ivr.lease_time"),  # no such setting
    ],
)
def test_a_bad_ivr_setting_is_named(section, key):
    with pytest.raises(ConfigError) as caught:
        load_settings(ivr=section)
    assert caught.value.key == key and key in str(caught.value)


def test_the_defaults_and_a_toml_section(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[ivr]\nlease = 2.5\noverflow_sound = "custom/full"\n')
    ivr = load_settings(cfg).ivr
    assert (ivr.lease, ivr.overflow_sound) == (2.5, "custom/full")
    assert ivr.session_ttl == 3600 and ivr.command_timeout == 10.0


def test_the_daemon_refuses_to_start_with_a_bad_ivr_setting():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNKLINE_")}
    env["TRUNKLINE_IVR__LEASE"] = "forever"
    proc = trunkline("run", "--role", "worker", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ivr.lease" in lines[0] and "TRUNKLINE_IVR__LEASE" in lines[0]
    assert "Traceback" not in proc.stderr
