"""The Chinese catalogue is complete and the committed .mo is compiled from the committed .po."""

import ast
import gettext
import re
from pathlib import Path

LOCALE = Path(__file__).resolve().parents[2] / "locale" / "zh_Hans" / "LC_MESSAGES"


def _entries() -> dict[str, str]:
    def unquote(s: str) -> str:
        return ast.literal_eval(s)  # PO escapes are a subset of Python string escapes

    entries, key, current = {}, None, {}
    for line in (LOCALE / "django.po").read_text(encoding="utf-8").splitlines():
        m = re.match(r'^(msgid|msgstr(?:\[0\])?|msgid_plural) (".*")$', line)
        if m:
            key = m.group(1).replace("[0]", "")
            if key == "msgid" and current:
                entries[current["msgid"]] = current.get("msgstr", "")
                current = {}
            current[key] = unquote(m.group(2))
        elif line.startswith('"') and key:
            current[key] += unquote(line)
    if current:
        entries[current["msgid"]] = current.get("msgstr", "")
    entries.pop("", None)
    return entries


def test_every_string_is_translated_and_the_mo_is_current():
    entries = _entries()
    assert len(entries) > 300
    assert [m for m, s in entries.items() if not s] == []
    compiled = gettext.GNUTranslations((LOCALE / "django.mo").open("rb"))
    stale = [m for m, s in entries.items() if compiled.gettext(m) != s]
    assert stale == [], f"run `make messages`: {stale[:5]}"
