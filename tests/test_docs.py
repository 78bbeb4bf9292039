"""The operator docs cannot drift: CONFIG.md is generated; the rest is checked against code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.__main__ import main
from bot.config import Settings
from bot.doctor import config_markdown, manifest_scopes

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


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
