"""Command-line options shared by several `fedlstm` commands (typer annotations)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Dataset = Annotated[Optional[str], typer.Option(help="nsl-kdd | kdd99 | unsw-nb15")]
Protocol = Annotated[Optional[str], typer.Option(help="official | random-split")]
Clients = Annotated[Optional[int], typer.Option(help="Number of sites (simulated clients or SuperNodes).")]
Partition = Annotated[Optional[str], typer.Option(help="iid | dirichlet:ALPHA | by:COLUMN | networks | files (each --train-file or folder is one client; the default with several --train-file)")]
Strategy = Annotated[Optional[str], typer.Option(help="fedavg | fedprox | fedadam")]
Rounds = Annotated[Optional[int], typer.Option()]
LocalEpochs = Annotated[Optional[int], typer.Option(help="E: local epochs per round.")]
Window = Annotated[Optional[int], typer.Option(help="Records per window (W).")]
Seed = Annotated[Optional[int], typer.Option()]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML or JSON run configuration.")]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="Override: key.path=value")]
DataDir = Annotated[Optional[str], typer.Option("--data-dir", help="Dataset folder (default: $FEDLSTM_DATA).")]
