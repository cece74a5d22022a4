"""hjepa_fast: a performance-engineered Hierarchical JEPA in PyTorch.

The top-level folder ``kernels/`` is installed as ``hjepa_fast.kernels`` (a PyPI package named
``kernels`` already exists), so the kernels import without pulling in the model stack.
"""
from setuptools import setup

setup(
    name="hjepa_fast",
    version="0.1.0",
    description="Hierarchical JEPA world models with Triton kernels",
    python_requires=">=3.10",
    packages=[
        "hjepa_fast",
        "hjepa_fast.model",
        "hjepa_fast.data",
        "hjepa_fast.train",
        "hjepa_fast.eval",
        "hjepa_fast.envs",
        "hjepa_fast.plan",
        "hjepa_fast.kernels",
    ],
    package_dir={"hjepa_fast.kernels": "kernels"},
    install_requires=[
        # timm needs torchvision, and torchvision pins a matching torch build: see README "Set-up".
        "torch>=2.4",
        "torchvision",
        "triton; platform_system == 'Linux'",
        "timm>=1.0",
        "PyYAML",
        "safetensors",  # hjepa export (also a dependency of timm)
        "tqdm",
        "numpy",
        "scikit-learn",  # the embedded data set (handwritten digits) and the linear probe
        "av",  # PyAV: video-folder data set
        "matplotlib",
        "scikit-image",  # panworld: CC0 / public-domain photos that ship inside the package
    ],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "ruff"],
        "gpu": ["flash-attn", "xformers"],
        "deepspeed": ["deepspeed"],
        "tensorboard": ["tensorboard"],
        "envs": ["gym-pusht"],  # the pusht environment (gymnasium, pymunk)
    },
    entry_points={"console_scripts": ["hjepa=hjepa_fast.cli:main"]},
)
