"""`fmsplat` command line. Each command is a thin wrapper over one stage's entry point."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Embed foundation-model features into 3D Gaussian Splatting scenes and query them in words.",
)


@app.callback()
def main() -> None:
    """fmsplat: foundation-model fields on 3D Gaussian Splatting scenes."""


@app.command()
def version() -> None:
    """Print the fmsplat, torch and numba versions."""
    import numba
    import torch

    from fmsplat import __version__

    typer.echo(f"fmsplat {__version__}  torch {torch.__version__}  numba {numba.__version__}")


if __name__ == "__main__":
    app()
