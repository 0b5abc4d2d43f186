"""
The README stays a page for users: at most 350 lines, the two set-up commands (the ones
``tests/test_extras.py`` holds to ``setup.py``) within its first 60 lines, and every link and
image of the README and of the pages under docs/ pointing at a file that exists.
"""

import re
from pathlib import Path

from test_extras import DEMO_COMMAND, TEST_COMMAND

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def test_readme_is_short_with_the_set_up_first():
    lines = README.read_text().splitlines()
    assert len(lines) <= 350
    head = "\n".join(lines[:60])
    assert DEMO_COMMAND in head and TEST_COMMAND in head


def test_every_local_link_and_image_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor in the page
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


def test_the_docs_pages_are_linked_from_the_readme():
    readme = README.read_text()
    assert [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme] == []
