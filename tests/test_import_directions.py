"""The import directions of DESIGN.md, read from the source with ``ast``: every import in ``hjepa_fast/``
and ``kernels/`` (at module level or inside a function) points to its own layer or one below; ``train/``,
``eval/`` and ``plan/`` never import one another; the kernels import nothing else of hjepa_fast. Imports
of the moved modules from their former homes keep working."""
from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hjepa_fast"
KERNELS = ROOT / "kernels"  # installed as hjepa_fast.kernels
LAYERS = [  # top to bottom; a module imports from its own layer or any layer below
    {"cli", "ablate"},  # entry points: compose training and evaluation
    {"train", "eval", "plan"},  # the three jobs; none imports another (SIBLINGS)
    {"runs", "checkpoint", "builders", "metrics", "export"},  # what the jobs share: run folders, builders, export
    {"model", "masks", "peer_masks", "data", "envs", "flops"},
    {"config", "errors", "kernels", "__init__"},
]
SIBLINGS = {"train", "eval", "plan"}
# deprecated aliases left at a former home; each may import the one module it stands for, nothing else upwards
ALIASES = {"hjepa_fast/eval/ablate.py": "hjepa_fast.ablate"}
LAYER_OF = {component: depth for depth, layer in enumerate(LAYERS) for component in layer}


def component_of_file(path: Path) -> str:
    """``hjepa_fast/train/engine.py`` -> ``train``; ``hjepa_fast/runs.py`` -> ``runs``; ``kernels/*`` -> ``kernels``."""
    if path.is_relative_to(KERNELS):
        return "kernels"
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def package_of(path: Path) -> str:
    """The dotted package a file's relative imports start from."""
    if path.is_relative_to(KERNELS):
        return "hjepa_fast.kernels"
    return ".".join(("hjepa_fast", *path.relative_to(PACKAGE).parent.parts))


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, absolute dotted name)`` of every import; ``from A import b`` gives ``A.b`` (``b`` may be a
    submodule, as in ``from . import distributed``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def component_of_module(name: str) -> str | None:
    """``hjepa_fast.train.builders.x`` -> ``train``; ``hjepa_fast.__version__`` -> ``__init__``; None for
    modules outside hjepa_fast."""
    parts = name.split(".")
    if parts[0] != "hjepa_fast":
        return None
    if len(parts) > 1 and parts[1] in LAYER_OF:
        return parts[1]
    return "__init__"


def violations(path: Path, source: str | None = None) -> list[str]:
    """Every import of ``path`` (or of ``source`` as if it were that file) against the rules, one line each."""
    rel = path.relative_to(ROOT).as_posix()
    src = component_of_file(path)
    found = []
    for line, name in imported_modules(source if source is not None else path.read_text(), package_of(path)):
        dst = component_of_module(name)
        if dst is None or dst == src:
            continue
        if ALIASES.get(rel) == name:
            continue
        if src == "kernels":
            found.append(f"{rel}:{line} imports {name}: the kernels import only torch and triton")
        elif LAYER_OF[dst] < LAYER_OF[src]:
            found.append(f"{rel}:{line} imports {name}: {src} must not import the layer above it ({dst})")
        elif src in SIBLINGS and dst in SIBLINGS:
            found.append(f"{rel}:{line} imports {name}: {src}/ and {dst}/ must not import each other")
    return found


def source_files() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *KERNELS.rglob("*.py")])


def test_every_module_of_the_package_has_a_layer():
    """A new module or subpackage is placed in LAYERS (and DESIGN.md) on purpose, not by accident."""
    unplaced = {component_of_file(path) for path in source_files()} - set(LAYER_OF)
    assert not unplaced, f"add these to LAYERS and to DESIGN.md: {sorted(unplaced)}"


def test_imports_point_down_the_layers():
    found = [line for path in source_files() for line in violations(path)]
    assert not found, "imports against DESIGN.md:\n" + "\n".join(found)


@pytest.mark.parametrize("file,source", [
    ("hjepa_fast/eval/probe.py", "from hjepa_fast.train.trainer import pick_device"),
    ("hjepa_fast/eval/probe.py", "def f():\n    from ..train import engine"),  # lazy and relative
    ("hjepa_fast/plan/evaluate.py", "import hjepa_fast.eval.probe"),
    ("hjepa_fast/plan/evaluate.py", "from hjepa_fast.eval import probe"),
    ("hjepa_fast/train/trainer.py", "from hjepa_fast.eval.metrics import rankme"),
    ("hjepa_fast/runs.py", "from hjepa_fast.train import trainer"),
    ("hjepa_fast/model/hjepa.py", "from hjepa_fast.builders import build_model"),
    ("hjepa_fast/config.py", "from hjepa_fast.model import hjepa"),
    ("kernels/ema.py", "from hjepa_fast.config import Config"),
    ("hjepa_fast/eval/ablate.py", "from hjepa_fast.train.trainer import train"),  # an alias names one module
])
def test_the_check_sees_an_upward_import(file, source):
    assert len(violations(ROOT / file, source)) == 1


@pytest.mark.parametrize("file,source", [
    ("hjepa_fast/cli.py", "from hjepa_fast.train.trainer import train\nfrom hjepa_fast.ablate import ablate"),
    ("hjepa_fast/train/trainer.py", "from hjepa_fast.runs import CHECKPOINT\nfrom . import distributed"),
    ("hjepa_fast/plan/world_model.py", "from hjepa_fast.builders import build_mask_sampler"),
    ("hjepa_fast/builders.py", "from hjepa_fast.model.hjepa import HJEPA\nimport hjepa_fast"),
    ("kernels/ema.py", "from .dispatch import use_triton\nimport triton"),
])
def test_the_check_lets_downward_imports_pass(file, source):
    assert violations(ROOT / file, source) == []


MOVED = [  # (former home, name, home)
    *[("hjepa_fast.train.trainer", n, "hjepa_fast.runs")
      for n in ("CHECKPOINT", "pick_device", "resume_config", "RESUMABLE_CHANGES")],
    *[("hjepa_fast.train.engine", n, "hjepa_fast.runs")
      for n in ("CHECKPOINT", "DCP_CHECKPOINT", "checkpoint_format", "has_checkpoint")],
    *[("hjepa_fast.train.deepspeed_engine", n, "hjepa_fast.runs") for n in ("DS_CHECKPOINT", "DS_META")],
    ("hjepa_fast.eval.probe", "load_run", "hjepa_fast.runs"),
    *[("hjepa_fast.train.run_folder", n, "hjepa_fast.runs")
      for n in ("LOCK", "RunLock", "create_run_dir", "remove_stale_temporaries", "write_config")],
    *[("hjepa_fast.train.checkpoint", n, "hjepa_fast.checkpoint")
      for n in ("TRUST_ENV", "load_checkpoint", "load_model_state", "rng_state", "save_checkpoint",
                "set_rng_state", "trusted")],
    *[("hjepa_fast.train.builders", n, "hjepa_fast.builders")
      for n in ("build_model", "build_mask_sampler", "build_dataset_for")],
    *[("hjepa_fast.eval.metrics", n, "hjepa_fast.metrics")
      for n in ("MIN_RANKME", "MIN_SPREAD", "collapse_report", "feature_spread", "rankme")],
]


@pytest.mark.parametrize("old,name,new", MOVED, ids=[f"{o}.{n}" for o, n, _ in MOVED])
def test_moved_names_import_from_their_former_home(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_the_ablation_alias_warns_and_gives_the_same_function():
    from hjepa_fast import ablate

    alias = importlib.import_module("hjepa_fast.eval.ablate")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert alias.ablate is ablate.ablate and alias.variants is ablate.variants
    assert any(issubclass(w.category, DeprecationWarning) and "hjepa_fast.ablate" in str(w.message) for w in caught)
