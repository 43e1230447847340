"""Words the parts of Tide share, each defined once (see ``../shared/DESIGN.md``, Contract 1).

The exporter (``tide.exporter``) writes these series and the operator (``tide_operator``)
reads them, and neither may import the other (``.importlinter``): the operator runs beside
any app and the exporter beside any operator. So the series names and the one parser of
their exposition live here, in a package that imports nothing of either. The broker's words
(keys, headers, the Redis layout) have their home in the integration, ``tide_celery.layout``.
"""
