"""The operator docs cannot drift: CONFIG.md is generated; the rest is checked against code."""

from __future__ import annotations

import io
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from dotenv import dotenv_values
from sqlalchemy import text

from bot.__main__ import main
from bot.config import Settings, load_settings
from bot.doctor import config_markdown, manifest_scopes
from bot.store.db import head_revision, make_engine, migrate

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Settings no operator sets (only the suite or development does). Every other setting has a
# row in README's configuration table and a line in .env.example; a new setting goes there, or
# here.
INTERNAL_SETTINGS: set[str] = set()
ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
FILLED_IN = {
    "SLACK_BOT_TOKEN": "xoxb-example",
    "SLACK_SIGNING_SECRET": "signing-secret-example",
    "ANTHROPIC_API_KEY": "sk-ant-example",
}


def operator_settings() -> set[str]:
    return {name.upper() for name in Settings.model_fields} - INTERNAL_SETTINGS


def section(path: Path, heading: str) -> str:
    return path.read_text(encoding="utf-8").split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def test_config_md_is_generated_from_the_settings():
    assert (DOCS / "CONFIG.md").read_text(encoding="utf-8") == config_markdown(), (
        "docs/CONFIG.md is stale: run `python -m bot config-docs > docs/CONFIG.md`"
    )


def test_every_setting_is_documented_with_its_type_and_default():
    text = config_markdown()
    for name, info in Settings.model_fields.items():
        assert info.description, f"{name}: give it Field(description=...)"
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name.upper()}` |"))
        assert info.description.replace("|", "\\|") in row
    assert "| `ANTHROPIC_API_KEY` | secret | **required** |" in text
    assert "| `WORKER_THREADS` | integer, ≥ 1, ≤ 256 | `16` |" in text
    assert "| `SLACK_BOT_TOKEN` | secret, optional | unset |" in text


def test_config_docs_command_needs_no_settings(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main(["config-docs"]) == 0
    assert capsys.readouterr().out == config_markdown()


def test_manifest_scopes_match_a_yaml_parser():
    manifest = yaml.safe_load((ROOT / "manifest.yml").read_text())
    assert manifest_scopes() == manifest["oauth_config"]["scopes"]["bot"]


def test_architecture_maps_every_module():
    text = (DOCS / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for path in sorted((ROOT / "bot").rglob("*.py")):
        if path.name == "__init__.py" and path.parent.name != "listeners":
            continue
        rel = path.relative_to(ROOT).as_posix()
        name = "bot/listeners/" if path.name == "__init__.py" else rel
        assert f"`{name}`" in text, f"docs/ARCHITECTURE.md: add {name} to the module map"
    for stage in (
        "listeners/",
        "job table",
        "service.py",
        "threads.py",
        "prompt.py",
        "llm.py",
        "store/",
        "chat.postMessage",
    ):
        assert stage in text


def test_deploy_shows_the_real_procfile_and_covers_each_target():
    text = (DOCS / "DEPLOY.md").read_text(encoding="utf-8")
    assert (ROOT / "Procfile").read_text().strip() in text
    for needle in (
        "Heroku Scheduler",
        "python -m bot housekeeping",
        "```dockerfile",
        "[Service]",
        "Socket Mode",
        "SLACK_APP_TOKEN",
        "PostgreSQL",
        "SKIP LOCKED",
        "operations.md",
    ):
        assert needle in text, needle


def test_relative_links_in_docs_resolve():
    for doc in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_readme_table_lists_every_operator_setting():
    listed: set[str] = set()
    for line in section(ROOT / "README.md", "## Configuration").splitlines():
        if line.startswith("| `"):
            listed |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    missing = operator_settings() - listed
    assert not missing, f"README.md: add rows for {sorted(missing)} (or list them as internal)"
    assert not listed - operator_settings(), "README.md's table names settings that do not exist"


def test_readme_states_the_python_the_package_requires():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.startswith(">=")
    assert f"Python {requires.removeprefix('>=')} or newer" in (ROOT / "README.md").read_text()


def env_example() -> list[tuple[bool, str, str]]:
    """(commented out?, name, raw value) for each setting line of .env.example."""
    found = []
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if m := ASSIGNMENT.match(line):
            found.append((m.group(1) is not None, m.group(2), m.group(3)))
    return found


def test_env_example_lists_every_operator_setting_once():
    names = [name for _, name, _ in env_example()]
    assert len(names) == len(set(names)), "a setting appears twice in .env.example"
    assert set(names) == operator_settings(), (
        f".env.example: missing {sorted(operator_settings() - set(names))}, "
        f"unknown {sorted(set(names) - operator_settings())}"
    )


def test_env_example_copied_and_filled_in_starts_and_shows_true_defaults(tmp_path):
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert [name for commented, name, _ in env_example() if not commented] == list(FILLED_IN)
    filled = example
    for name, value in FILLED_IN.items():
        filled = filled.replace(f"\n{name}=\n", f"\n{name}={value}\n")
    (tmp_path / ".env").write_text(filled, encoding="utf-8")
    assert load_settings(FILLED_IN, env_file=str(tmp_path / ".env")).port == 3000

    # Each commented-out line, uncommented, is valid; where the setting has a default, it is it.
    uncommented = "\n".join(f"{name}={raw}" for _, name, raw in env_example())
    for name, value in dotenv_values(stream=io.StringIO(uncommented)).items():
        if not value or name in FILLED_IN:
            continue
        settings = load_settings({**FILLED_IN, name: value}, env_file=None)
        default = Settings.model_fields[name.lower()].default
        if default not in (None, ""):
            assert getattr(settings, name.lower()) == default, f".env.example: {name}"


def test_documented_sqlite_backup_copies_a_running_database(tmp_path):
    """operations.md's SQLite backup commands, run while the bot's engine holds commits that
    are only in the WAL file and has a write transaction open."""
    lines = section(DOCS / "operations.md", "## Backups and restore").splitlines()
    commands = [shlex.split(line) for line in lines if line.startswith(("sqlite3 ", "python3 "))]
    assert [argv[0] for argv in commands] == ["sqlite3", "python3"]
    live = tmp_path / "bot.db"
    engine = make_engine(f"sqlite:///{live}")
    migrate(engine)
    hold = engine.connect()
    try:
        hold.begin()
        hold.execute(text("UPDATE alembic_version SET version_num = version_num"))
        shutil.copy(live, tmp_path / "copied.db")
        with sqlite3.connect(tmp_path / "copied.db") as copied:  # why the docs say not to
            assert not copied.execute("SELECT name FROM sqlite_master").fetchall()
        for i, argv in enumerate(commands):
            if argv[0] == "python3":
                argv[0] = sys.executable
            elif shutil.which(argv[0]) is None:
                continue  # the sqlite3 program is not installed here; the Python form is
            backup = tmp_path / f"backup{i}.db"
            argv = [
                a.replace("/data/bot.db", str(live)).replace("/backups/bot.db", str(backup))
                for a in argv
            ]
            subprocess.run(argv, check=True, timeout=60, capture_output=True)
            restored = make_engine(f"sqlite:///{backup}")
            try:
                with restored.connect() as conn:
                    version = conn.execute(text("SELECT version_num FROM alembic_version"))
                    assert version.scalar_one() == head_revision(restored)
            finally:
                restored.dispose()
    finally:
        hold.rollback()
        hold.close()
        engine.dispose()
