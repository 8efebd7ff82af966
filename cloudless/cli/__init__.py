"""``cloudlessctl``: a thin typer + rich layer over :mod:`cloudless.client`."""
