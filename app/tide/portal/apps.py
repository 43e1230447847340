from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "tide.portal"
    label = "portal"
