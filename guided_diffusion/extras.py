"""
The optional third-party packages, in one place: which ``setup.py`` extra installs each, and
a check that names the missing ones before a program starts long work.

The core (``install_requires``) covers training, sampling and evaluation. Everything else is
imported only where it is used, and only through a name listed here; ``tests/test_extras.py``
reads every import of the project and fails when a third-party package is neither required
nor listed here with an extra that really installs it.
"""

import importlib.util

# import name -> (distribution on PyPI, the setup.py extra that installs it)
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "matplotlib": ("matplotlib", "demo"),  # the demo's plots
    "sklearn": ("scikit-learn", "demo"),  # the demo's digits and their clean classifier
    "mpi4py": ("mpi4py", "mpi"),  # ranks started by mpiexec / mpirun
    "tensorboard": ("tensorboard", "tensorboard"),  # logger's 'tensorboard' format
    "timm": ("timm", "timm"),  # the evaluator's --fd_timm_model
    # evaluations/compare_metrics.py, a developer's check against independent implementations
    "torchmetrics": ("torchmetrics", "dev"),
    "prdc": ("prdc", "dev"),
}

# optional packages that [dev] does not install, and why (their tests use a stand-in module)
NOT_IN_DEV: dict[str, str] = {
    "timm": "it needs torchvision, which does not import beside the CPU build of torch",
}

# imports of an installed package's module that work only with another package present
NEEDS: dict[str, str] = {"torch.utils.tensorboard": "tensorboard"}


class MissingPackageError(ModuleNotFoundError, ValueError):
    """An optional package a program needs is not installed (a user error: one line, exit 1)."""


def install_command(extra: str) -> str:
    """:return: the command that installs ``extra`` into a checkout of this project."""
    return f'pip install -e ".[{extra}]"'


def missing_packages(*modules: str) -> list[str]:
    """:return: those of ``modules`` (import names listed in OPTIONAL_PACKAGES) not installed."""
    unknown = [m for m in modules if m not in OPTIONAL_PACKAGES]
    if unknown:
        raise KeyError(f"not an optional package of this project: {', '.join(unknown)}")
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(*modules: str, purpose: str) -> None:
    """
    Raise a one-line ``MissingPackageError`` naming every missing package of ``modules`` and the
    command that installs it, before any work is done.

    :param modules: import names listed in OPTIONAL_PACKAGES.
    :param purpose: what needs them, e.g. "the demo".
    """
    missing = missing_packages(*modules)
    if missing:
        names = ", ".join(OPTIONAL_PACKAGES[m][0] for m in missing)
        extras = sorted({OPTIONAL_PACKAGES[m][1] for m in missing})
        commands = " and ".join(install_command(e) for e in extras)
        raise MissingPackageError(f"{purpose} needs {names}, which is not installed: {commands}")
