"""`manage.py mcppool apply FILE [--dry-run] [--prune]`, `manage.py mcppool export
[--include-secrets]` and `manage.py mcppool rotate-secrets`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from servers import configfile, services


class Command(BaseCommand):
    help = "Config as code: apply a YAML file of pools, servers and affinity rules, or export one."
    # Every check but the URL checks: those import the URLconf, hence the REST API, the runtime
    # and the mcp SDK — over a second of CPU that config-as-code never uses
    # (tests/test_cli.py; `make bench` measures it as `cli_cpu_ms`).
    requires_system_checks = [
        tag
        for name, tag in vars(checks.Tags).items()
        if not name.startswith("_") and tag != checks.Tags.urls
    ]

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(
            dest="action", required=True, metavar="{apply,export,rotate-secrets}"
        )
        apply = actions.add_parser("apply", help="make the config match a file")
        apply.add_argument("file", help="YAML file, or - for standard input")
        apply.add_argument(
            "--dry-run", action="store_true", help="print the changes, write nothing"
        )
        apply.add_argument(
            "--prune",
            action="store_true",
            help="also delete pools, servers and rules the file does not name",
        )
        export = actions.add_parser("export", help="print the current config as YAML")
        export.add_argument("--output", "-o", help="write to this file instead of stdout")
        export.add_argument(
            "--include-secrets",
            action="store_true",
            help="write secret header and environment values in plaintext (masked otherwise)",
        )

        actions.add_parser(
            "rotate-secrets",
            help="re-encrypt stored secrets with the first key of MCPPOOL_SECRETS_KEY",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = int(options["verbosity"])
        if options["action"] == "rotate-secrets":
            self.rotate_secrets()
        elif options["action"] == "apply":
            self.apply(options["file"], dry_run=options["dry_run"], prune=options["prune"])
        else:
            self.export(options["output"], include_secrets=options["include_secrets"])

    def apply(self, file: str, *, dry_run: bool, prune: bool) -> None:
        text = self.read(file)
        source = "<stdin>" if file == "-" else file
        try:
            change_plan = configfile.apply_text(text, source, prune=prune, dry_run=dry_run)
        except configfile.ConfigFileError as exc:
            raise CommandError(str(exc)) from exc
        if not change_plan:
            self.say("no changes")
            return
        for line in change_plan.describe():
            self.say(line)
        count = len(change_plan.changes)
        if dry_run:
            self.say(f"{count} changes (dry run: nothing written)")
        else:
            self.say(f"applied {count} changes", self.style.SUCCESS)

    def export(self, output: str | None, *, include_secrets: bool) -> None:
        try:
            text = configfile.export(include_secrets=include_secrets)
        except ImproperlyConfigured as exc:  # a secret no configured key opens
            raise CommandError(str(exc)) from exc
        if output:
            path = Path(output)
            if include_secrets:  # readable by the owner only, before a byte is written
                path.touch(mode=0o600)
                path.chmod(0o600)
            path.write_text(text, encoding="utf-8")
            self.say(f"wrote {output}")
        else:
            self.stdout.write(text, ending="")

    def rotate_secrets(self) -> None:
        try:
            count = services.rotate_secrets()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        self.say(f"re-encrypted the secrets of {count} servers", self.style.SUCCESS)

    def read(self, file: str) -> str:
        if file == "-":
            return sys.stdin.read()
        try:
            return Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{file}: cannot read: {exc}") from exc

    def say(self, line: str, style: Any = None) -> None:
        if self.verbosity > 0:
            self.stdout.write(style(line) if style else line)
