"""docs/install.md's steps, run as written in a scratch root: the system's own tools
(apt-get, systemctl, sysusers, usermod) are stand-ins that record what they were asked,
systemd-tmpfiles makes the directories the shipped tmpfiles.d file declares, and every
path under /etc, /opt and /usr/lib lands in the scratch root. What the steps build (the
config, the keys file, the units in place) must then be what modeld accepts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAND_INS = r"""
record() { printf '%s\n' "$*" >> "$SCRATCH/calls"; }
apt-get() { record apt-get "$@"; }
python3() { record python3 "$@"; }
systemctl() { record systemctl "$@"; }
systemd-sysusers() { record systemd-sysusers "$@"; }
usermod() { record usermod "$@"; }
systemd-tmpfiles() {
  record systemd-tmpfiles "$@"
  grep '^d ' "$SCRATCH/usr/lib/tmpfiles.d/modeld.conf" | while read -r _ dir _; do
    mkdir -p "$SCRATCH$dir"
  done
}
install() {  # owners and groups are the system's: the scratch root keeps the modes
  local args=() skip=0
  for arg in "$@"; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    case "$arg" in -g|-o) skip=1 ;; *) args+=("$arg") ;; esac
  done
  command install "${args[@]}"
}
set -e
"""


def install_block() -> str:
    """The first shell block of docs/install.md, its system paths moved to $SCRATCH."""
    text = (ROOT / "docs" / "install.md").read_text()
    match = re.search(r"```sh\n(.*?)```", text, re.S)
    assert match, "docs/install.md has no ```sh block"
    block = match.group(1)
    return re.sub(r"(?<![\w$/])/(etc|opt|usr/lib)/", r"$SCRATCH/\1/", block)


def test_the_install_steps_build_a_config_modeld_accepts(tmp_path: Path) -> None:
    """Steps 1-6 as written: each command succeeds, the config they leave is valid (one
    [gateway] table naming the keys file they made), check-config passes, and the units
    are where systemctl is told to enable them."""
    scratch = tmp_path / "root"
    (scratch / "opt/modeld/bin").mkdir(parents=True)
    for tool in ("modeld", "modelctl", "modeld-gateway"):
        (scratch / "opt/modeld/bin" / tool).symlink_to(BIN / tool)
    (scratch / "opt/modeld/bin/pip").write_text("#!/bin/sh\nexit 0\n")
    (scratch / "opt/modeld/bin/pip").chmod(0o755)
    for folder in ("usr/lib/sysusers.d", "usr/lib/tmpfiles.d", "etc/systemd/system"):
        (scratch / folder).mkdir(parents=True)
    # modelctl status needs a running daemon: here it only has to be found and called.
    (scratch / "opt/modeld/bin/modelctl").unlink()
    (scratch / "opt/modeld/bin/modelctl").write_text(
        f'#!/bin/sh\necho modelctl "$@" >> "{scratch}/calls"\n'
    )
    (scratch / "opt/modeld/bin/modelctl").chmod(0o755)
    # The operator's edit: the config's own paths (the key file it names) into the scratch root.
    editor = tmp_path / "editor"
    editor.write_text(f'#!/bin/sh\nsed -i "s#/etc/modeld/#{scratch}/etc/modeld/#g" "$1"\n')
    editor.chmod(0o755)
    env = {**os.environ, "SCRATCH": str(scratch), "EDITOR": str(editor), "SUDO_USER": "operator"}
    result = subprocess.run(
        ["bash", "-c", STAND_INS + install_block()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = scratch / "etc/modeld/modeld.toml"
    assert config.read_text().count("[gateway]") == 1
    assert (scratch / "etc/modeld/api-keys").stat().st_mode & 0o777 == 0o640
    checked = subprocess.run(
        [str(BIN / "modeld"), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    units = scratch / "etc/systemd/system"
    assert {p.name for p in units.iterdir()} >= {
        "modeld.socket",
        "modeld.service",
        "modeld-gateway.service",
    }
    calls = (scratch / "calls").read_text()
    assert "systemctl enable --now modeld.socket modeld.service" in calls
    assert "systemctl enable --now modeld-gateway.service" in calls
