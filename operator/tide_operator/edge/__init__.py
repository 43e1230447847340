"""The kopf edge: the handlers kopf runs, the ``tide operator`` command, and the
operator's own metrics endpoint. The only layer that imports kopf.
"""
