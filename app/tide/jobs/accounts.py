"""API credentials: users and their tokens, for the CLI and local mode."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token


def ensure_token(username: str) -> str:
    """Return USERNAME's API token, creating the user and the token when missing."""
    user, _ = get_user_model().objects.get_or_create(username=username)
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)
