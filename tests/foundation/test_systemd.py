"""The systemd units are valid and hardened."""

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[2] / "systemd"


@pytest.mark.parametrize("unit", ["trunkline-api.service", "trunkline-worker.service"])
def test_unit_is_hardened_and_migrates_first(unit):
    text = (UNITS / unit).read_text()
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "User=trunkline",
        "ExecStartPre=/opt/trunkline/bin/trunkline migrate",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
    ):
        assert line in text.splitlines(), f"{unit}: missing {line}"


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    for unit in ("trunkline-api.service", "trunkline-worker.service"):
        # verify checks that executables exist; point them at one that does.
        text = (UNITS / unit).read_text().replace("/opt/trunkline/bin/trunkline", "/bin/true")
        (tmp_path / unit).write_text(text)
    proc = subprocess.run(
        [analyze, "verify", *(str(p) for p in sorted(tmp_path.glob("*.service")))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "trunkline" not in proc.stderr, proc.stderr
