"""
Every third-party package the project imports is installed by the command that the README
gives for it: the core by ``install_requires``, an optional package (listed once, with its
extra, in ``guided_diffusion/extras.py``) by that extra, and everything the tests import by
``.[dev]``. The imports are read from the source with ``ast``, those inside functions
included, so a lazy ``import matplotlib`` counts like any other.
"""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from guided_diffusion import extras

REPO = Path(__file__).resolve().parent.parent
PROJECT = ("guided_diffusion", "evaluations")
PROGRAM_FOLDERS = ("guided_diffusion", "evaluations", "scripts")
# the README's commands: the demo installs [demo], the tests [dev]
DEMO_COMMAND = 'pip install torch==2.13.0 -e ".[demo]"'
TEST_COMMAND = 'pip install torch==2.13.0 -e ".[dev]"'


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])


def read_setup() -> tuple[set[str], dict[str, set[str]]]:
    """:return: (install_requires, {extra: its distributions}) of setup.py, names normalised."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords
                if k.arg in ("install_requires", "extras_require")}
    core = {_requirement_name(r) for r in keywords.get("install_requires", [])}
    extra = {name: {_requirement_name(r) for r in reqs}
             for name, reqs in keywords.get("extras_require", {}).items()}
    return core, extra


def imports_of(path: Path) -> set[str]:
    """:return: every absolute module name ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def third_party(names: set[str], local: set[str] = frozenset()) -> set[str]:
    """
    :return: the import names of ``names`` that no standard module or project module
        provides: top-level names, except where ``extras.NEEDS`` says a submodule needs another
        package (``torch.utils.tensorboard`` needs ``tensorboard``).
    """
    found = set()
    for name in names:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in PROJECT or top in local:
            continue
        needs = [extras.NEEDS[n] for n in extras.NEEDS if name == n or name.startswith(n + ".")]
        found.update(needs or [top])
    return found


_DISTRIBUTIONS = importlib.metadata.packages_distributions()


def distribution(import_name: str) -> str:
    """:return: the normalised name of the distribution that installs ``import_name``."""
    if import_name in extras.OPTIONAL_PACKAGES:
        return _normalise(extras.OPTIONAL_PACKAGES[import_name][0])
    found = _DISTRIBUTIONS.get(import_name)
    return _normalise(found[0] if found else import_name)


def uncovered_imports(folders, core: set[str], extra: dict[str, set[str]]) -> list[str]:
    """:return: 'file: name (why)' for each import of the programs' code nothing installs."""
    problems = []
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            local = {p.stem for p in path.parent.glob("*.py")}  # a script's sibling modules
            for name in sorted(third_party(imports_of(path), local)):
                if distribution(name) in core:
                    continue
                if name not in extras.OPTIONAL_PACKAGES:
                    problems.append(f"{path.relative_to(REPO)}: {name} (neither in "
                                    "install_requires nor listed in extras.OPTIONAL_PACKAGES)")
                    continue
                dist, extra_name = extras.OPTIONAL_PACKAGES[name]
                if _normalise(dist) not in extra.get(extra_name, set()):
                    problems.append(f"{path.relative_to(REPO)}: {name} (its extra "
                                    f"[{extra_name}] does not install {dist})")
    return problems


def test_every_import_of_the_programs_is_installed_by_its_extra():
    core, extra = read_setup()
    assert uncovered_imports(PROGRAM_FOLDERS, core, extra) == []


def test_the_check_catches_a_package_missing_from_its_extra():
    # the demo's extra as it was before matplotlib was added to it
    core, extra = read_setup()
    extra = {**extra, "demo": extra["demo"] - {"matplotlib"}}
    problems = uncovered_imports(PROGRAM_FOLDERS, core, extra)
    assert problems and all("matplotlib" in p and "[demo]" in p for p in problems)


def test_every_import_of_the_tests_is_installed_by_dev():
    core, extra = read_setup()
    tests = REPO / "tests"
    # the tests' helpers, and the programs they import from scripts/ on sys.path
    local = {p.stem for p in (*tests.rglob("*.py"), *(REPO / "scripts").glob("*.py"))}
    local |= {"tests", "scripts"}
    missing = sorted(
        f"{path.relative_to(REPO)}: {name}"
        for path in tests.rglob("*.py")
        for name in third_party(imports_of(path), local)
        if distribution(name) not in core | extra["dev"]
    )
    assert missing == []


def test_dev_installs_every_extra_so_no_test_skips_for_a_package():
    _, extra = read_setup()
    exempt = {_normalise(extras.OPTIONAL_PACKAGES[m][0]) for m in extras.NOT_IN_DEV}
    for name, dists in extra.items():
        lacking = dists - extra["dev"] - exempt
        assert not lacking, f"[dev] lacks {sorted(lacking)} of [{name}]"
    assert set(extra) >= {e for _, e in extras.OPTIONAL_PACKAGES.values()}


def project_closure(start: Path) -> set[Path]:
    """:return: the project's source files ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the file's package
                    package = path.parent.relative_to(REPO).parts[: len(path.parent.relative_to(
                        REPO).parts) - (node.level - 1)]
                    base = ".".join([*package, base] if base else package)
                modules = [base, *(f"{base}.{a.name}" for a in node.names)]
            for module in modules:
                parts = module.split(".")
                if parts[0] not in PROJECT:
                    continue
                for candidate in (REPO.joinpath(*parts).with_suffix(".py"),
                                  REPO.joinpath(*parts, "__init__.py")):
                    if candidate.exists():
                        todo.append(candidate)
    return seen


def test_the_demo_checks_every_demo_package_it_imports_before_it_starts():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import demo
    finally:
        sys.path.remove(str(REPO / "scripts"))
    imported = set()
    for path in project_closure(REPO / "scripts" / "demo.py"):
        imported |= third_party(imports_of(path), {p.stem for p in path.parent.glob("*.py")})
    needs_demo = {n for n in imported
                  if extras.OPTIONAL_PACKAGES.get(n, ("", ""))[1] == "demo"}
    assert needs_demo == set(demo.DEMO_PACKAGES)


def test_the_readme_commands_name_the_extras():
    readme = (REPO / "README.md").read_text()
    assert DEMO_COMMAND in readme and TEST_COMMAND in readme


def test_require_names_the_package_and_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    with pytest.raises(extras.MissingPackageError) as caught:
        extras.require("sklearn", "matplotlib", purpose="the demo")
    assert str(caught.value) == ('the demo needs matplotlib, which is not installed: '
                                 'pip install -e ".[demo]"')
    assert isinstance(caught.value, ValueError)  # a user error: one line, exit 1
    extras.require("sklearn", purpose="the demo")  # installed: no error
    with pytest.raises(KeyError, match="numpy"):
        extras.require("numpy", purpose="x")
