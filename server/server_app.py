"""fedpeft ServerApp: the federation (server/federation.py) as a Flower app, simulated or deployed."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpeft.core.config import FederationConfig, load_config
from fedpeft.core.errors import ConfigError
from fedpeft.core.training.data import load_rows

from .federation import run_federation


def make_server_app(config: FederationConfig, labels: tuple[str, ...], out: Path, resume: bool = False) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, labels, out, resume)

    return app


app = ServerApp()


@app.main()
def deployed_main(grid: Grid, context: Context) -> None:
    """The ServerApp `flwr run` starts on a SuperLink (deploy/): the run config names the
    settings file and whether to resume from the checkpoint in its run.out."""
    if not context.run_config.get("config"):
        raise ConfigError("the run config names no settings file (config=...): submit with `fedpeft deploy`")
    config = load_config(str(context.run_config["config"]))
    _, labels = load_rows(config.data_spec())
    run_federation(grid, config, labels, Path(config.run.out), resume=bool(context.run_config["resume"]))
