"""The README runs as written: every Python block in order (one namespace, as a reader runs them), the
shell blocks marked ``<!-- readme-test: shell -->``, and ``blpjax demo``; the blocks marked otherwise are run by
their own tests (``install``: CI's own steps; ``multi-host``: tests/test_multihost.py; ``mixtape``: the
course replication below, when the course data are present).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def blocks():
    """(marker or None, language, code) of every fenced block of the README, in order."""
    return [(m["marker"], m["lang"], m["code"]) for m in BLOCK.finditer((ROOT / "README.md").read_text())]


def test_every_block_is_run_somewhere():
    for marker, lang, code in blocks():
        if lang == "python":
            assert marker is None or marker.startswith("multi-host"), code[:80]
        else:
            assert marker is not None and marker.split(":")[1].split()[0] in ("install", "shell", "mixtape"), code[:80]


def test_python_blocks_run_in_order():
    namespace: dict = {"__name__": "readme"}
    for k, (marker, lang, code) in enumerate(blocks()):
        if lang == "python" and marker is None:
            exec(compile(code, f"README.md python block {k}", "exec"), namespace)  # noqa: S102
    assert abs(namespace["results"].objective - 4.561514) < 1e-5  # the quick example's comment
    assert abs(namespace["bucketed"].objective - 4.561514) < 1e-5  # "as on the padded layout"


def _with_this_python() -> dict:
    """The environment with this interpreter's directory first on PATH: ``python`` in a block is the one testing."""
    return dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def test_shell_blocks_and_the_demo_run():
    for marker, lang, code in blocks():
        if lang == "bash" and marker is not None and marker.startswith("readme-test: shell"):
            subprocess.run(["bash", "-ec", code], check=True, timeout=60, env=_with_this_python())
    demo = subprocess.run(
        # the README's `blpjax demo` on 40 markets and 100 agents (the default 200 × 200 takes a minute on 2 cores;
        # every step and section is the same)
        [
            sys.executable,
            "-c",
            "from blpjax.internal import cli_main; cli_main(['demo', '--markets', '40', '--agents', '100'])",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    for section in (
        "1) Plain logit",
        "2) BLP random coefficients",
        "Bertrand–Nash prices and shares by blpjax.Simulation",
        "3) Counterfactual",
        "merger of firms 0 and 1",
        "4) Micro moment",
        "5) Optimal micro moments",
        "E[income | j > 0]",
        "score[pi[1, income]]",
        "optimal micro moment",
    ):
        assert section in demo.stdout


def test_the_cli_checks_its_arguments():
    for args, message in ((["demo", "--markets", "0"], "at least 10"), (["demo", "--agents", "x"], "integer")):
        proc = subprocess.run(
            [sys.executable, "-c", f"from blpjax.internal import cli_main; cli_main({args!r})"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    help_text = subprocess.run(
        [sys.executable, "-c", "from blpjax.internal import cli_main; cli_main(['demo', '--help'])"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "--no-allocator-tuning" in help_text  # as the README documents


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "data" / "mixtape" / "products.csv").exists(), reason="the course data are not here")
def test_the_mixtape_replication_command_runs(tmp_path):
    (marker, _, code) = next(b for b in blocks() if b[0] and b[0].startswith("readme-test: mixtape"))
    command = code.strip().replace("results.json", str(tmp_path / "results.json"))
    subprocess.run(["bash", "-ec", command], check=True, cwd=ROOT, timeout=3600, env=_with_this_python())
    assert (tmp_path / "results.json").exists()
