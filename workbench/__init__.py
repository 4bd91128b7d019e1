"""HOS Workbench terminal app and CLI (Textual, rich, typer); all computing is in `core`."""
