"""The package's shape, as far as a test can see it (import-linter checks the layers in `make test`)."""

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "instructemo"


@pytest.mark.slow
def test_heavy_optional_libraries_load_only_where_a_run_uses_them():
    """Every verb's modules import without deepspeed, vllm or bitsandbytes, so `--help` prints no DeepSpeed line."""
    modules = "cli train.sft train.head evaluate.generate evaluate.calibrate verbs infer.classifier".split()
    modules += [f"verbs.{p.stem}" for p in (SRC / "verbs").glob("*.py") if p.stem != "__init__"]
    code = "import sys\n" + "".join(f"import instructemo.{m}\n" for m in modules)
    code += "print(sorted(m for m in ('deepspeed', 'vllm', 'bitsandbytes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "accelerator" not in out.stderr.lower()


def test_every_package_says_what_it_owns():
    """Packages by concern: each package's __init__ opens with what it owns (a module holds one concept; reviews
    judge that, not a line count)."""
    packages = sorted(p.parent for p in SRC.rglob("__init__.py") if p.parent != SRC)
    assert {p.name for p in packages} >= {"config", "data", "evaluate", "infer", "models", "prompts", "report", "run"}
    for package in packages:
        text = (package / "__init__.py").read_text()
        assert text.lstrip().startswith('"""') and len(text.split('"""')[1].split()) >= 8, package.name


def test_no_module_sits_at_the_top_but_the_interfaces_and_the_one_error_type():
    assert sorted(p.stem for p in SRC.glob("*.py")) == ["__init__", "cli", "errors"]


@pytest.mark.parametrize("package", ["run", "config", "data", "prompts", "report"])
def test_the_light_packages_offer_their_public_surface_without_loading_torch(package):
    """Each names what other packages use in its __init__ (__all__), and importing it stays light."""
    code = f"import sys, instructemo.{package} as p; assert p.__all__ and all(hasattr(p, n) for n in p.__all__); "
    code += "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
