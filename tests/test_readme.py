"""The README is the user's entry point: its commands and its configuration table must stay true."""

from __future__ import annotations

import pathlib
import re

from lurestream.config import SETTINGS, settings_markdown

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _shell_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", README, re.S)]


def test_readme_opens_with_demo_then_test_command_and_ci_runs_the_test_command():
    demo, test = _shell_blocks()[:2]
    assert "lurestream demo" in demo
    assert "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines(), ".ci/run must run the README's test command, unchanged"


def test_every_setting_is_documented():
    for s in SETTINGS:
        assert s.env in README, f"{s.env} missing from the README's configuration table"


def test_the_settings_table_is_the_one_generated_from_the_settings():
    """Each setting's default and meaning live once, in lurestream/config.py; the README shows them."""
    begin = README.index("<!-- settings table:")
    table = README[README.index("\n", begin) + 1 : README.index("\n<!-- end of settings table -->")]
    assert table == settings_markdown(), "regenerate it: python -m lurestream.config"
