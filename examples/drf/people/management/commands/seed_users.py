"""
Create or update users from JSON: `manage.py seed_users` reads DRF_USERS, or `--json TEXT`.

    [{"username": "alice", "password": "…", "scopes": ["people:read", "people:write"]}]

Each scope becomes a group (the token's `scope` claim lists the user's groups); a user's
groups are set to exactly the listed scopes. `"superuser": true` makes a superuser.
"""
import json
import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction


class Command(BaseCommand):
    help = "Create or update users (and their scope groups) from JSON."

    def add_arguments(self, parser):
        parser.add_argument("--json", help="the users as JSON (default: the DRF_USERS environment variable)")

    def handle(self, *args, **options):
        text = options["json"] or os.environ.get("DRF_USERS", "")
        if not text.strip():
            return
        try:
            users = json.loads(text)
        except ValueError as err:
            raise CommandError(f"users: not JSON: {err}")
        if not isinstance(users, list):
            raise CommandError("users: must be a JSON array")
        User = get_user_model()
        with transaction.atomic():
            for i, entry in enumerate(users):
                if not isinstance(entry, dict) or not entry.get("username") or not entry.get("password"):
                    raise CommandError(f"users[{i}]: needs username and password")
                if str(entry["password"]).startswith(settings.PLACEHOLDER_PREFIX):
                    raise CommandError(f"users[{i}].password: is the published placeholder from .env.example; set your own in DRF_USERS")
                user, _ = User.objects.get_or_create(username=entry["username"])
                user.set_password(entry["password"])
                user.is_superuser = user.is_staff = bool(entry.get("superuser", False))
                user.save()
                user.groups.set([Group.objects.get_or_create(name=s)[0] for s in entry.get("scopes", [])])
        self.stdout.write(f"{len(users)} user(s) seeded")
