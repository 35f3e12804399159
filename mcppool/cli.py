"""The `mcppool` console script: `mcppool apply FILE`, `mcppool export`, or any manage.py command.

`mcppool apply x.yaml` is `manage.py mcppool apply x.yaml`; anything else goes to manage.py as is
(`mcppool migrate`, `mcppool createsuperuser`).
"""

import os
import sys

OWN_COMMANDS = {"apply", "export"}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcppool.settings")
    from django.core.management import execute_from_command_line

    args = sys.argv[1:]
    if args and args[0] in OWN_COMMANDS:
        args = ["mcppool", *args]
    execute_from_command_line(["mcppool", *args])
