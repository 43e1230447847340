from django.apps import AppConfig


class SamplesConfig(AppConfig):
    name = "tide.samples"
    label = "samples"
