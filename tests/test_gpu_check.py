"""benchmarks/gpu_check.py, which exercises every CUDA path on a GPU, runs its quick CPU mode here,
so that the script keeps working where no GPU is (the GPU run itself is done when one is lent)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_quick_cpu_run_checks_every_path(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check
    spec.loader.exec_module(gpu_check)
    code = gpu_check.main(["--device", "cpu", "--quick", "--workers", "0", "--work", str(tmp_path)])
    table = capsys.readouterr().out
    assert code == 0, table
    for path in (
        "forward biggan_deep-128",
        "forward stylegan2-32",
        "generate biggan_deep --encoder pil",
        "generate stylegan2 --encoder torchvision",
        "steer biggan_deep",
        "train input pipeline (Tx on workers)",
        "train input pipeline (Tx on device)",
        "train Tx on device vs PIL",
        "train input vs step (Tx on device)",
        "genrep-train",
        "torchrun 1 process (gloo)",
        "genrep-train --generator",
        "knn faiss vs torch",
        "diffusers",
    ):
        assert path in table, path
    rows = [line for line in table.splitlines() if line.startswith(("forward", "generate"))]
    assert all(line.split()[-1] in ("yes", "-") for line in rows)
    assert " 0 failed" in table
