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
        "scipy",
        "pillow",
        "tqdm",
        "blobfile>=1.0.5",
    ],
    extras_require={
        "mpi": ["mpi4py"],
        # scripts/demo.py: the built-in digits (sklearn.datasets.load_digits) and their judge
        "demo": ["scikit-learn"],
        # torchmetrics and prdc: independent KID and density / coverage in tests/test_metrics.py
        "dev": ["pytest", "mpi4py", "mpich", "scikit-learn", "torchmetrics", "prdc"],
    },
)
