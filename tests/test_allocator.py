"""relaunch_with_tuned_allocator: re-executes a script (or ``python -m`` module) with glibc's tunables, once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from blpjax import ALLOCATOR_TUNABLES
from blpjax.internal import glibc_supports_hugetlb

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import blpjax
    print("start", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
    blpjax.relaunch_with_tuned_allocator()
    print("tuned", blpjax.allocator_tuned(), sys.argv[1:])
    """
)


def _run(args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BLPJAX_TUNE_ALLOCATOR")}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.skipif(not glibc_supports_hugetlb(), reason="needs Linux with glibc >= 2.35")
def test_relaunch_sets_tunables_once_and_keeps_arguments(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    lines = _run([str(script), "--flag", "x"])
    # the first process printed "start None" and was replaced; the second starts tuned and does not relaunch
    assert lines == [
        "start None ['--flag', 'x']",
        f"start {ALLOCATOR_TUNABLES} ['--flag', 'x']",
        "tuned True ['--flag', 'x']",
    ]
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(
        "from . import __name__ as _parent  # a relative import: fails unless run with -m\n" + SCRIPT
    )
    lines = _run(["-m", "pkg.job", "y"], {"PYTHONPATH": str(tmp_path)})
    assert lines[-1] == "tuned True ['y']"


def test_relaunch_can_be_turned_off(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    assert _run([str(script)], {"BLPJAX_TUNE_ALLOCATOR": "0"}) == ["start None []", "tuned False []"]
    # a GLIBC_TUNABLES the user chose is left alone
    assert _run([str(script)], {"GLIBC_TUNABLES": "glibc.malloc.check=0"})[-1] == "tuned False []"
