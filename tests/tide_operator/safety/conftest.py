"""SafeScaleIn's findings: pure tables here, real Celery workers in ``test_worker_probe``."""
