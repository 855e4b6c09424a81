"""One module per stage. Each stage is a plain function over a batch, wrapped by a thin Prefect task."""
