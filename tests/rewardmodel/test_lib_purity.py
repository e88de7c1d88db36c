"""What the pure libraries may import, checked in a fresh interpreter per module.

No module under rewardmodel/lib or training/lib imports Django or Celery: the
walk below finds every module, so a new one is covered without editing this
file. Web processes import `rewardmodel.lib.config`, `training.lib.dpo_config` and
`training.lib.ppo_config` to validate run configurations: those, and the
modules the web app calls in-process, must not load torch or transformers.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = ("rewardmodel.lib", "training.lib")


def library_modules() -> list[str]:
    """Every package and module of the pure libraries, found on disk."""
    names = []
    for package in LIBRARIES:
        names.append(package)
        folder = REPO.joinpath(*package.split("."))
        names += [info.name for info in pkgutil.walk_packages([str(folder)], prefix=f"{package}.")]
    return names


MODULES = library_modules()

#: Importable without torch or transformers (each module's docstring promises it).
TORCH_FREE = (
    "rewardmodel.lib.backbones",
    "rewardmodel.lib.config",
    "training.lib.dpo_config",
    "training.lib.endpoint",
    "training.lib.generation",
    "training.lib.oracles",
    "training.lib.ppo_config",
    "training.lib.ranking",
)


def _loaded_after_import(module: str, watched: tuple[str, ...]) -> list[str]:
    """The packages among `watched` that `import module` loads in a fresh interpreter."""
    code = (f"import {module}; import sys; "
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(watched)!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("module", TORCH_FREE)
def test_modules_web_processes_import_load_no_torch(module: str) -> None:
    assert _loaded_after_import(module, ("torch", "transformers")) == []


def test_the_walk_finds_the_library_modules() -> None:
    expected = {"rewardmodel.lib.train", "rewardmodel.lib.runtime", "training.lib.oracles", "training.lib.endpoint",
                "training.lib.ppo", *TORCH_FREE}
    assert expected <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_library_module_never_imports_django_or_celery(module: str) -> None:
    assert _loaded_after_import(module, ("django", "celery")) == []
