"""The images install the runtime dependencies only (``make setup EXTRAS=``): nothing the
service imports may need a package that only the ``dev`` extra brings.

CI installs ``.[dev]``, so a module-level ``import yaml`` in service code would pass every
other test and break only the Docker image.  Here a fresh interpreter refuses the dev-only
packages and imports every module of the three packages, builds the app and parses the CLI.
Ray is the ``cluster`` extra: ``service.cluster`` alone may import it, and must say so clearly
when it is missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Top-level modules of the dev extra (pyproject.toml), and Ray (the cluster extra).
DEV_ONLY = (
    *("pytest", "_pytest", "pytest_asyncio", "pytest_timeout", "playwright", "ruff", "mypy"),
    *("yaml", "ray"),
)

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = set(sys.argv[1].split(","))

    class DevOnly(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed (dev/cluster extra)")
            return None

    sys.meta_path.insert(0, DevOnly())
    failures = []
    for package in ("models", "engines", "service"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if info.name.startswith("service.cluster"):
                continue  # the cluster extra's; checked below
            try:
                importlib.import_module(info.name)
            except Exception as error:
                failures.append(f"{info.name}: {error!r}")
    try:
        importlib.import_module("service.cluster.router")
        failures.append("service.cluster.router imported without Ray")
    except ImportError as error:
        print("cluster without ray:", error)

    from service.app import create_app
    from service.cli import parser
    from service.settings import Settings

    create_app(Settings())
    parser().parse_args(["serve", "--port", "8001"])
    if failures:
        print("\\n".join(failures))
        sys.exit(1)
    print("ok")
    """
)


def test_the_service_imports_without_the_dev_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(DEV_ONLY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok"), done.stdout
    assert "cluster without ray" in done.stdout, done.stdout
