"""``python -m aligntime`` runs the command line."""

from aligntime.cli.main import main

main()
