from django.urls import include, path
from rest_framework.routers import SimpleRouter

from tide.jobs.api.views import (
    JobViewSet,
    PeriodicTaskViewSet,
    QueueListView,
    TaskListView,
    WorkflowView,
)

router = SimpleRouter()
router.register("jobs", JobViewSet, basename="job")
router.register("periodic-tasks", PeriodicTaskViewSet, basename="periodic-task")

urlpatterns = [
    path("workflows/", WorkflowView.as_view(), name="workflow-submit"),
    path("tasks/", TaskListView.as_view(), name="task-list"),
    path("queues/", QueueListView.as_view(), name="queue-list"),
    path("", include(router.urls)),
]
