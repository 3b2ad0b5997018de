"""docs/rfc.md agrees with the code: the RFCs every capability table cites are listed as
implemented, and every module the table names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAPABILITY_MODULES = ["mailstack.smtp.capabilities", "mailstack.imap.capabilities", "mailstack.pop3.capabilities",
                      "mailstack.managesieve.capabilities"]


def table() -> dict[str, tuple[str, list[str]]]:
    """RFC number (or name) -> (status, [paths named in its 'where' column])."""
    rows = {}
    for line in (ROOT / "docs" / "rfc.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0].startswith("**") or cells[0] in ("RFC", "---"):
            continue
        rfc, _title, status, where, _notes = cells
        assert status in ("Yes", "Partial", "No"), line
        assert rfc not in rows, f"{rfc} listed twice"
        rows[rfc] = (status, re.findall(r"`([^`]+)`", where))
    return rows


def cited(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    numbers = set()
    for cap in module.CAPABILITIES:
        numbers.update(re.findall(r"RFC (\d+)", cap.rfc))
    return numbers


@pytest.mark.parametrize("module_name", CAPABILITY_MODULES)
def test_every_rfc_a_capability_cites_is_implemented_in_the_table(module_name):
    rows = table()
    numbers = cited(module_name)
    assert numbers, f"{module_name} cites no RFC"
    for number in sorted(numbers):
        assert number in rows, f"{module_name} cites RFC {number}, which docs/rfc.md does not list"
        assert rows[number][0] in ("Yes", "Partial"), f"RFC {number} is advertised but listed as {rows[number][0]}"


def test_every_module_the_table_names_exists():
    for rfc, (status, paths) in table().items():
        if status == "No":
            assert not paths, f"RFC {rfc} is marked No but names {paths}"
            continue
        assert paths, f"RFC {rfc} is marked {status} but names no module"
        for path in paths:
            assert (ROOT / path).exists(), f"RFC {rfc}: {path} does not exist"


def test_the_table_lists_every_rfc_of_the_shared_list():
    """The RFCs named in shared/README.md (the ones the project answers to) all have a row."""
    readme = ROOT.parent / "shared" / "README.md"
    if not readme.exists():
        pytest.skip("no shared/README.md beside the checkout")
    wanted = set(re.findall(r"\b(\d{4})\b", readme.read_text().split("## The RFCs", 1)[-1]))
    missing = sorted(wanted - set(table()))
    assert not missing, f"docs/rfc.md has no row for RFC {', '.join(missing)}"
