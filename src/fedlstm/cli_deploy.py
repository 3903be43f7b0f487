"""`fedlstm deploy ...`: certificates, keys and a local multi-process Flower federation."""

from __future__ import annotations

import typer

deploy_app = typer.Typer(no_args_is_help=True,
                         help="Run the federation as real processes (SuperLink + SuperNodes).")
