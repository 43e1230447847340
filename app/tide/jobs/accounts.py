"""API credentials: users and their tokens, for the CLI and local mode."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token


def ensure_token(username: str) -> str:
    """Return USERNAME's API token, creating the user and the token when missing."""
    user, _ = get_user_model().objects.get_or_create(username=username)
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


def ensure_admin_login(username: str, password_file: Path) -> str:
    """Make USERNAME an admin whose password is in ``password_file``; return the password.

    For local mode only: the developer who ran ``tide up`` logs in to the admin with it.
    The file keeps the password across restarts (0600, like the token file); a missing
    file or a password that no longer matches gets a fresh random one.
    """
    user, _ = get_user_model().objects.get_or_create(username=username)
    password = password_file.read_text().strip() if password_file.exists() else ""
    if not password or not user.check_password(password) or not user.is_superuser:
        password = password or secrets.token_urlsafe(12)
        user.set_password(password)
        user.is_staff = user.is_superuser = True
        user.save()
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
    return password
