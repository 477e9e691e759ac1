"""The `upscale` command line: one module per command, registered on one typer app in this order."""

# isort: off
from upscaler.cli import upscale, video, models, evaluate, compile, bench, train  # noqa: F401 (registers the commands)
# isort: on
from upscaler.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
