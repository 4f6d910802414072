from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from optout.models import ApiClient, ApiScope


class Command(BaseCommand):
    help = (
        "Create an API key with the given scopes and print it once; only its hash is kept. "
        f"Scopes: {', '.join(ApiScope.values)}."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="who uses the key, e.g. 'training-pipeline-eu'")
        parser.add_argument("--scopes", nargs="+", required=True, metavar="SCOPE", help=", ".join(ApiScope.values))

    def handle(self, *args, name: str, scopes: list[str], **options):
        unknown = sorted(set(scopes) - set(ApiScope.values))
        if unknown:
            raise CommandError(f"Unknown scope(s): {', '.join(unknown)}. Choose from: {', '.join(ApiScope.values)}.")
        if not 0 < len(name) <= 50:
            raise CommandError("The name must have 1 to 50 characters.")
        client, key = ApiClient.objects.create_key(name=name, scopes=sorted(set(scopes)))
        self.stderr.write(
            f"Created API client {client.name!r} (prefix {client.prefix}) with scopes {', '.join(client.scopes)}. "
            "The key follows; it is shown only this once:"
        )
        self.stdout.write(key)
