"""Add, re-role or remove a project member without the Django admin.

    manage.py add_member --project demo2 --user bob --role annotator [--create-user [--email bob@example.org]]
    manage.py add_member --project demo2 --user bob --remove

Idempotent: adding a member who already has the role, or removing someone who is not a
member, changes nothing and says so. ``--create-user`` makes the account when there is
none; its password is read from ``NEW_USER_PASSWORD`` when set (checked against the
site's password rules), otherwise generated and printed once, to hand over in person.
"""
from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotate import people
from annotate.commands import project_get
from annotate.services import InvalidInput

PASSWORD_ENV = "NEW_USER_PASSWORD"


class Command(BaseCommand):
    help = "Add a member to a project, change their role, or remove them (--remove)."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="the project's slug")
        parser.add_argument("--user", required=True, help="username (or email of an existing user)")
        parser.add_argument("--role", choices=people.ROLES, default="annotator")
        parser.add_argument("--remove", action="store_true", help="remove the member instead")
        parser.add_argument("--create-user", action="store_true",
                            help=f"create the user when missing (password from ${PASSWORD_ENV}, else printed once)")
        parser.add_argument("--email", default="", help="with --create-user: the new user's email")

    def handle(self, *args, project: str, user: str, role: str, remove: bool, create_user: bool, email: str,
               **options):
        target = project_get(project)
        try:
            if remove:
                person = people.user_find(user)
                removed = people.member_remove(project=target, user=person)
                self.stdout.write(f"removed {person.username} from {target.slug}" if removed
                                  else f"{person.username} is not a member of {target.slug}; nothing to do")
                return
            person = self._user(user, create=create_user, email=email)
            before = target.memberships.filter(user=person).values_list("role", flat=True).first()
            membership, created = people.member_set(project=target, user=person, role=role)
        except InvalidInput as error:
            raise CommandError(str(error)) from None
        if created:
            self.stdout.write(f"added {person.username} to {target.slug} as {membership.role}")
        elif before == membership.role:
            self.stdout.write(f"{person.username} is already {membership.role} in {target.slug}; nothing to do")
        else:
            self.stdout.write(f"{person.username} is now {membership.role} in {target.slug} (was {before})")

    def _user(self, identifier: str, *, create: bool, email: str):
        try:
            return people.user_find(identifier)
        except InvalidInput:
            if not create:
                raise InvalidInput(f"no user named {identifier!r} (add --create-user to create one)") from None
        password = os.environ.get(PASSWORD_ENV)
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        else:
            try:
                password_validation.validate_password(password, get_user_model()(username=identifier, email=email))
            except ValidationError as error:
                raise InvalidInput(f"${PASSWORD_ENV} is refused: {' '.join(error.messages)}") from None
        person = people.user_create(username=identifier, password=password, email=email)
        if generated:
            self.stdout.write(f"created user {person.username} with password: {password}")
            self.stdout.write("(shown once; set $NEW_USER_PASSWORD to choose it instead)")
        else:
            self.stdout.write(f"created user {person.username} with the password from ${PASSWORD_ENV}")
        return person
