"""The package's metadata: every package ships, the extras users need exist."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _project() -> dict:  # type: ignore[type-arg]
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_every_package_of_the_tree_is_listed_for_the_wheel() -> None:
    """The editable install of ``make`` finds any package; a wheel only the listed ones
    (gevwire._uring was once missing, so ``import gevwire`` failed when installed)."""
    config = _project()["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "gevwire").rglob("__init__.py")}
    on_disk |= {"gevwire.codecs"} if (REPO / "codecs" / "__init__.py").exists() else set()
    assert listed == on_disk
    assert config["package-dir"] == {"gevwire.codecs": "codecs"}


def test_extras_and_license() -> None:
    project = _project()["project"]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("hypothesis") for dep in extras["testing"])
    assert extras["fuzz"][1].endswith("platform_system == 'Linux' and "
                                      "platform_machine == 'x86_64'")
    assert project["license"] == "MIT" and (REPO / "LICENSE").is_file()
    assert "Typing :: Typed" in project["classifiers"]


def test_testing_says_what_to_install_without_hypothesis() -> None:
    code = ("import sys; sys.modules['hypothesis'] = None\n"  # as if not installed
            "import importlib.util as u; u.find_spec = lambda name, *a: None\n"
            "import gevwire.testing as t\n"
            "try:\n    t.check_codec(None)\n"
            "except ModuleNotFoundError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "pip install 'gevwire[testing]'" in out
