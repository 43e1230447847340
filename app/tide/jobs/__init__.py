"""Jobs: what clients submit, and the record of how each one went.

A ``Job`` row is written by the API before its message is published, and moved through
its states by the workers (``signals``), never by polling the result backend.
"""
