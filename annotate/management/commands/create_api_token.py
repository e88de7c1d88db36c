from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotate.tokens import token_create


class Command(BaseCommand):
    help = "Create a bearer token for the JSON API and print it (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to recognise the token by.")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        self.stdout.write(token_create(user=user, name=name))
