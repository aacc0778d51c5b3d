"""The package's shape, as far as a test can see it (import-linter checks the layers in `make test`)."""

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "instructemo"


@pytest.mark.slow
def test_heavy_optional_libraries_load_only_where_a_run_uses_them():
    """Every verb's modules import without deepspeed, vllm or bitsandbytes, so `--help` prints no DeepSpeed line."""
    modules = "cli train dense evaluate predict calibrate cv tools compare infer.classifier".split()
    code = "import sys\n" + "".join(f"import instructemo.{m}\n" for m in modules)
    code += "print(sorted(m for m in ('deepspeed', 'vllm', 'bitsandbytes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "accelerator" not in out.stderr.lower()


def test_no_module_is_longer_than_one_sitting():
    lengths = {p.relative_to(SRC).as_posix(): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 450} == {}
