"""Is the embedded generator as fast as it was? images/s of this tree's version vs a git revision's.

Both versions are built in one process and timed on the same latents, batch after batch in turn,
so a load that comes and goes on a shared machine hits both alike. For each it prints the best
wall-clock images/s over the repeats and images per CPU-second (process time, which other processes
disturb less), and the ratio of this tree to the baseline (goal: >= 400 img/s at 128 px on 2 cores).

    python benchmarks/embedded_speed.py [--baseline HEAD~1] [--resolution 128] [--threads 2]
        [--fields S]   # this tree's generator with its warp and shading fields of strength S
"""

from __future__ import annotations

import argparse
import subprocess
import time
import types
from pathlib import Path

import torch

from genrep.generate.models.embedded import EmbeddedGenerator

SOURCE = "generate/models/embedded.py"


def generator_at(revision: str) -> type:
    """The EmbeddedGenerator class of `revision`, loaded without registering it a second time."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(
        ["git", "show", f"{revision}:{SOURCE}"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    text = text.replace('@GENERATORS.register("embedded")', "")
    module = types.ModuleType(f"embedded_at_{revision}")
    exec(compile(text, f"{revision}:{SOURCE}", "exec"), module.__dict__)
    return module.EmbeddedGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD~1", help="git revision to compare with")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--fields", type=float, default=0.0, help="model option fields of this tree's generator"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    versions = {
        f"baseline ({args.baseline})": generator_at(args.baseline)(resolution=args.resolution),
        "this tree": EmbeddedGenerator(resolution=args.resolution, fields=args.fields),
    }
    z = torch.randn(args.batch_size, versions["this tree"].z_dim)
    wall = dict.fromkeys(versions, 0.0)
    cpu = dict.fromkeys(versions, 0.0)
    with torch.no_grad():
        for generator in versions.values():
            generator(z[:4])  # warm-up
        for _ in range(args.repeats):
            for name, generator in versions.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                generator(z)
                wall[name] = max(wall[name], len(z) / (time.perf_counter() - started))
                cpu[name] = max(cpu[name], len(z) / (time.process_time() - cpu_started))
    print(
        f"embedded generator forward, {args.resolution} px, batch {args.batch_size}, "
        f"{args.threads} threads, best of {args.repeats}; this tree with fields={args.fields:g}"
    )
    for name in versions:
        print(f"  {name:28s} {wall[name]:7.0f} img/s   {cpu[name]:7.0f} img per CPU-second")
    base = next(iter(versions))
    print(
        f"  ratio this tree / baseline: wall {wall['this tree'] / wall[base]:.2f}, "
        f"CPU {cpu['this tree'] / cpu[base]:.2f}"
    )


if __name__ == "__main__":
    main()
