"""Invalid values are refused before anything renders, with a message that names the fix.

Types, enums and bounds are refused by values.schema.json (helm names the key and the
rule); rules across keys and "no secrets in values" are refused by the chart's
tide.validate helper with a sentence that says what to set instead.
"""

from __future__ import annotations

import json

import pytest
from chart_render import CHART, helm


def pools(*items: dict) -> list[str]:
    """``--set-json workerPools=[…]`` for pools that differ from a minimal valid one."""
    base = {"name": "a", "queues": ["q"], "maxReplicas": 2}
    return ["--set-json", "workerPools=" + json.dumps([{**base, **item} for item in items])]


CASES = [
    # A typo in a key must not pass silently.
    (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
    # Zero API replicas would be an outage.
    (["--set", "api.replicas=0"], "at '/api/replicas': minimum: got 0, want 1"),
    # Unknown operator scope.
    (["--set", "operator.scope=everywhere"], "at '/operator/scope'"),
    # Every container has resources: limits cannot be dropped.
    (["--set", "api.resources.limits=null"], "at '/api/resources': missing property 'limits'"),
    # The restricted profile cannot be switched off through values.
    (
        ["--set", "containerSecurityContext.allowPrivilegeEscalation=true"],
        "at '/containerSecurityContext/allowPrivilegeEscalation'",
    ),
    (["--set", "podSecurityContext.runAsNonRoot=false"], "at '/podSecurityContext/runAsNonRoot'"),
    # A pool needs at least one queue; concurrency is at least 1.
    (pools({"queues": []}), "at '/workerPools/0/queues': minItems: got 0, want 1"),
    (pools({"concurrency": 0}), "at '/workerPools/0/concurrency': minimum: got 0, want 1"),
    # A pool names one metric source, not two.
    (
        pools({"metrics": {"exporter": {"url": "http://e"}, "prometheus": {"url": "http://p"}}}),
        "at '/workerPools/0/metrics'",
    ),
    # Cross-field rules, refused by the chart with a sentence.
    (pools({"minReplicas": 3}), "workerPools[a]: minReplicas (3) must not exceed maxReplicas (2)"),
    (
        pools({"fallback": {"failureThreshold": 1, "replicas": 5}}),
        "fallback.replicas (5) must not exceed maxReplicas (2)",
    ),
    (pools({}, {"queues": ["r"]}), 'the name "a" is used twice'),
    # External services need a URL from somewhere.
    (["--set", "postgresql.enabled=false"], "set database.existingSecret"),
    (["--set", "redis.enabled=false"], "set broker.existingSecret"),
    # Secrets are never inlined in values.
    (
        ["--set", "postgresql.enabled=false", "--set", "database.url=postgres://u:pw@db/tide"],
        "database.url carries a password: put the URL in a Secret",
    ),
    (
        ["--set", "config.extraEnv[0].name=API_TOKEN", "--set", "config.extraEnv[0].value=x"],
        "API_TOKEN looks like a secret; give it valueFrom.secretKeyRef",
    ),
    (["--set", "flower.extraArgs[0]=--basic-auth=admin:x"], "credentials on the command line"),
    # Scraping everything twice is refused.
    (
        [
            "--set",
            "monitoring.serviceMonitor.enabled=true",
            "--set=monitoring.podMonitor.enabled=true",
        ],
        "enable serviceMonitor or podMonitor, not both",
    ),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[c[1][:40] for c in CASES])
def test_invalid_values_are_refused(args: list[str], message: str) -> None:
    result = helm("template", "tide", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_valid_external_url_without_password_is_accepted() -> None:
    # IAM or trust authentication: a URL with no password may be given as a value.
    result = helm(
        "template",
        "tide",
        str(CHART),
        "--set",
        "postgresql.enabled=false",
        "--set",
        "database.url=postgres://tide@db.internal:5432/tide",
        check=False,
    )
    assert result.returncode == 0, result.stderr
