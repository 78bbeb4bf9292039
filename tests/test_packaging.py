"""A non-editable install works outside the checkout: the wheel carries the migrations.

The wheel is built with the setuptools of the running environment (no build isolation) and
installed without dependencies into a fresh venv that borrows this environment's packages
through a .pth file, so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from bot.store.db import current_revision, head_revision, make_engine

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "bot", "migrations")


def run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of its sources (the checkout gets no build/)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index"]
        + ["--no-build-isolation", "--wheel-dir", str(dist), str(src)]
    )
    (built,) = dist.glob("threadcache_bot-*.whl")
    return built


def fresh_venv(path: Path) -> Path:
    """A venv without pip whose interpreter also sees this environment's site-packages."""
    run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    python = path / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    ).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(purelib, "borrowed-dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return python


def test_the_wheel_ships_every_module_and_migration(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bot").rglob("*.py")}
    expected |= {
        "bot/" + p.relative_to(ROOT).as_posix()
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert expected - names == set()


def test_an_installed_wheel_migrates_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = fresh_venv(venv)
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--no-deps", "--no-index", str(wheel)]
    )
    where = run([str(python), "-c", "import bot; print(bot.__file__)"], cwd=tmp_path).stdout
    assert Path(where.strip()).is_relative_to(venv), "bot must come from the installed wheel"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    db = tmp_path / "data" / "bot.db"
    db.parent.mkdir()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(elsewhere),
        "DATABASE_URL": f"sqlite:///{db}",
        "SLACK_BOT_TOKEN": "xoxb-packaging-test",
        "ANTHROPIC_API_KEY": "sk-packaging-test",
    }
    done = run([str(venv / "bin" / "bot"), "migrate"], cwd=elsewhere, env=env)
    assert "Traceback" not in done.stderr

    engine = make_engine(f"sqlite:///{db}")
    try:
        assert current_revision(engine) == head_revision(engine) is not None
    finally:
        engine.dispose()
