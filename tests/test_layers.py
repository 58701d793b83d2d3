"""The package's structure: layers that import downwards only, and tests that use public names.

The layer contracts live in pyproject.toml ([tool.importlinter]) and are checked with import-linter.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layers_import_downwards_only():
    pytest.importorskip("importlinter")
    code = (
        "from importlinter.cli import lint_imports; "
        f"raise SystemExit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_tests_benchmarks_and_notebooks_use_public_names_or_the_internal_face():
    private = re.compile(r"(from\s+blpjax(\.\w+)*\._\w+\s+import|import\s+blpjax(\.\w+)*\._\w+|from\s+blpjax\._\w+)")
    offenders = []
    for folder in ("tests", "benchmarks", "notebooks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".ipynb") and path.is_file():
                hits = private.findall(path.read_text(errors="replace"))
                if hits:
                    offenders.append(f"{path.relative_to(ROOT)} ({len(hits)})")
    assert not offenders, f"import blpjax or blpjax.internal instead of private modules: {offenders}"


def test_no_module_over_500_lines():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in (ROOT / "blpjax").rglob("*.py")}
    assert max(sizes.values()) <= 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
