"""Study scripts: one question each; run with `python -m studies.<name>` or `make <name>`."""
