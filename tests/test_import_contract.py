"""
The import contract (README, "Layout"): the modules of ``guided_diffusion`` and ``evaluations``
sit in layers (import-linter's layers contract, ``[tool.importlinter]`` in pyproject.toml), no
import forms a cycle, and only the demo uses the demo, scikit-learn and matplotlib.

Both tools read imports from the source, imports inside functions included, so a lazy import
that closes a cycle or points upward counts like any other; the tests on small packages written
to ``tmp_path`` show it.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest
from importlinter.api import read_configuration

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("guided_diffusion", "evaluations")
DEMO = "guided_diffusion.demo"
DEMO_ONLY_PACKAGES = ("sklearn", "matplotlib")  # the [demo] extra


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run import-linter on the contracts of ``cwd``'s pyproject.toml, ``cwd`` importable first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])}
    command = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", command, "--no-cache", "--no-logo", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def build_graph(*packages: str, **options) -> grimp.ImportGraph:
    """:return: grimp's graph of ``packages`` (every import, at any depth of the code)."""
    return grimp.build_graph(*packages, cache_dir=None, **options)


def import_cycles(graph: grimp.ImportGraph) -> list[str]:
    """
    :return: each import cycle of ``graph`` once, as 'a -> b -> ... -> a' starting from its
        smallest module: for every direct import a -> b, grimp's shortest chain back from b to a.
    """
    cycles = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                loop = (importer, *back[:-1])
                start = loop.index(min(loop))
                cycles.add(loop[start:] + loop[:start])
    return sorted(" -> ".join((*cycle, cycle[0])) for cycle in cycles)


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def layer_modules() -> set[str]:
    """:return: every module the layers contract names (optional ones without parentheses)."""
    contracts = read_configuration(str(REPO / "pyproject.toml"))["contracts_options"]
    (layers,) = [c["layers"] for c in contracts if c["id"] == "layers"]
    return {name.strip().strip("()") for layer in layers for name in layer.split(":")}


@pytest.fixture(scope="module")
def project_graph() -> grimp.ImportGraph:
    for package in PACKAGES:  # the checkout under test, not another install of the project
        assert Path(importlib.util.find_spec(package).origin).parent.parent == REPO
    return build_graph(*PACKAGES, include_external_packages=True)


def test_the_layers_contract_is_kept():
    result = lint_imports(REPO, "--contract", "layers")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_import_cycle(project_graph):
    assert import_cycles(project_graph) == []


def test_every_module_of_guided_diffusion_is_in_a_layer(project_graph):
    children = project_graph.find_children("guided_diffusion")
    assert sorted(children - layer_modules()) == []


def test_only_the_demo_imports_the_demo_and_its_packages(project_graph):
    demo = {DEMO, *project_graph.find_descendants(DEMO)}
    offenders = sorted(
        f"{importer} -> {imported}"
        for imported in demo | set(DEMO_ONLY_PACKAGES) if imported in project_graph.modules
        for importer in project_graph.find_modules_that_directly_import(imported)
        if importer not in demo
    )
    assert offenders == []


def test_importing_the_core_pulls_in_neither_scikit_learn_nor_matplotlib():
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        for package in {PACKAGES!r}:
            for module in pkgutil.walk_packages(importlib.import_module(package).__path__,
                                                package + "."):
                if not module.name.startswith({DEMO + "."!r}) and module.name != {DEMO!r}:
                    importlib.import_module(module.name)
        print(sorted(n for n in sys.modules if n.split(".")[0] in {DEMO_ONLY_PACKAGES!r}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path, monkeypatch):
    write_package(tmp_path, {
        "lazy/__init__.py": "",
        "lazy/a.py": "def f():\n    from lazy import b  # only when f runs\n    return b\n",
        "lazy/b.py": "import lazy.a\n",
        "lazy/c.py": "import lazy.b\n",  # imports into the cycle, is not on it
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles(build_graph("lazy")) == ["lazy.a -> lazy.b -> lazy.a"]


def test_the_layers_contract_counts_an_upward_import_inside_a_function(tmp_path):
    write_package(tmp_path, {
        "pyproject.toml": """
            [tool.importlinter]
            root_packages = ["toy"]
            [[tool.importlinter.contracts]]
            id = "layers"
            name = "toy layers"
            type = "layers"
            layers = ["toy.high", "toy.low"]
        """,
        "toy/__init__.py": "",
        "toy/high.py": "import toy.low\n",
        "toy/low.py": "def f():\n    import toy.high  # only when f runs\n",
    })
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "toy.low is not allowed to import toy.high" in result.stdout


def test_modules_stay_small_enough_to_read():
    # issue 21: no module of guided_diffusion over 900 lines, the sampling driver at most 400
    package = Path(__file__).resolve().parents[1] / "guided_diffusion"
    sizes = {p.relative_to(package).as_posix(): len(p.read_text().splitlines())
             for p in package.rglob("*.py")}  # fmt: skip
    assert {name: n for name, n in sizes.items() if n > 900} == {}
    assert sizes["sample_util.py"] <= 400
