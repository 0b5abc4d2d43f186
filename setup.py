from setuptools import find_packages, setup

setup(
    name="guided-diffusion",
    version="0.2.0",
    description="Guided diffusion (Dhariwal & Nichol 2021): models, training, "
    "guided sampling and evaluation on PyTorch",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["guided_diffusion", "guided_diffusion.*",
                                    "evaluations", "evaluations.*"]),
    install_requires=[
        "torch>=2.1",
        "numpy",
        "pillow",
        "tqdm",
        "blobfile>=1.0.5",
    ],
    # Every optional import of the programs is listed with its extra in
    # guided_diffusion/extras.py; tests/test_extras.py holds this file to that list.
    extras_require={
        "mpi": ["mpi4py"],
        # scripts/demo.py: the built-in digits and their judge (scikit-learn), the plots
        "demo": ["scikit-learn", "matplotlib"],
        "tensorboard": ["tensorboard"],
        # evaluations/evaluator.py --fd_timm_model: a timm network as the FD feature extractor
        "timm": ["timm"],
        # the tests: every extra above (but timm, see guided_diffusion/extras.py), an MPI library
        # for the multi-rank runs, independent references for the metrics (scipy, torchmetrics
        # for KID, prdc for density / coverage), import-linter and grimp for the import contract
        "dev": ["pytest", "mpi4py", "mpich", "scikit-learn", "matplotlib", "tensorboard",
                "scipy", "torchmetrics", "prdc", "import-linter>=2.1", "grimp"],
    },
)
