"""One module per outside system: each hides its system behind a small interface of the core."""
