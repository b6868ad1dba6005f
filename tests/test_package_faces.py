"""What `import phase1` and `import phase2` offer: every exported name resolves, and importing the package alone
stays light (the names load on first use)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["phase1", "phase2"])
def test_every_exported_name_imports(package):
    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        value = getattr(module, name)
        assert getattr(value, "__name__", name) == name, name  # the named object, not a module of that name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_one_import_form_of_the_original_code():
    from phase2 import Phase2Config, Phase2IntegratedModel, create_phase2_model

    model = create_phase2_model(preset="debug")
    assert isinstance(model, Phase2IntegratedModel) and isinstance(model.config, Phase2Config)


def test_submodules_still_import_by_name():
    from phase2 import diagnostics, evaluate, generate

    assert callable(diagnostics.main) and callable(evaluate.evaluate_text) and callable(generate.generate)


@pytest.mark.parametrize("package, heavy", [("phase1", "compressai"), ("phase2", "torch")])
def test_importing_the_package_alone_is_light(package, heavy):
    code = f"import sys, {package}; print({heavy!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr
