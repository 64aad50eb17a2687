"""`genrep`: one command whose subcommands are the stage commands (`genrep generate ...` is
`genrep-generate ...`). Subcommands are imported when used, so `genrep --help` stays fast."""

from __future__ import annotations

import importlib

import click

from genrep import __version__
from genrep.errors import Group

#: subcommand -> (module, attribute) of the click command it runs
SUBCOMMANDS = {
    "generate": ("genrep.generate.cli", "main"),
    "steer": ("genrep.generate.cli", "steer_main"),
    "shards": ("genrep.shards_cli", "main"),
    "train": ("genrep.train.cli", "main"),
    "export": ("genrep.train.cli", "export_main"),
    "probe": ("genrep.evaluate.cli", "main"),
    "sweep": ("genrep.sweep.cli", "main"),
}


class StageGroup(Group):
    """A group whose subcommands are the stage CLIs, loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attribute = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="genrep")
def main() -> None:
    """Generative models as a data source for multiview representation learning.

    Stage 1: generate (and steer), shards; stage 2: train, export; stage 3: probe; the three
    over a grid of settings: sweep.
    Each subcommand is also installed as genrep-<subcommand>.
    """


if __name__ == "__main__":
    main()
