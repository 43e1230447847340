from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "tide.health"
    label = "health"
