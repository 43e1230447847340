"""HTTP views of the jobs API: parse, call ``services``, render. No state changes here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tide.health.metrics import JOBS_SUBMITTED
from tide.jobs import services
from tide.jobs.api import idempotency
from tide.jobs.api.serializers import (
    BulkResultSerializer,
    BulkSubmitSerializer,
    CancelSerializer,
    JobDetailSerializer,
    JobSerializer,
    PeriodicTaskSerializer,
    QueueInfoSerializer,
    SubmitTaskSerializer,
    SubmitWorkflowSerializer,
    TaskInfoSerializer,
    known_queues,
)
from tide.jobs.models import Job, JobKind, JobState
from tide.jobs.registry import describe, registered_tasks
from tide.jobs.services import Idempotency


def _when(text: str) -> datetime | None:
    """An ISO 8601 date and time (naive ones read as UTC), or None if it is not one."""
    try:
        when = parse_datetime(text)
    except ValueError:  # well formed but impossible, like month 13
        return None
    if when is None:
        return None
    if timezone.is_naive(when):
        return when.replace(tzinfo=UTC)
    # Python takes offsets up to ±23:59, PostgreSQL only up to ±15:59: the query gets the
    # same instant in UTC, so any offset Python parsed is one the database reads.
    try:
        return when.astimezone(UTC)
    except OverflowError:  # year 1 moved back or year 9999 moved forward past the range
        return None


class InvalidCursor(ValidationError):
    default_code = "invalid_cursor"


class StrictPageSize(CursorPagination):
    """``page_size`` from 1 to ``max_page_size``, or a 400 naming the bound (DRF falls
    back to the default size for ``page_size=null`` and cuts ``page_size=9999`` silently)."""

    page_size_query_param = "page_size"
    max_page_size = 500

    #: Query parameters the listing takes besides the pagination's own.
    filters: frozenset[str] = frozenset()

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> Any:
        # An unknown parameter is a typo or a filter this API does not have: listing
        # everything instead would answer a question that was not asked.
        known = {self.cursor_query_param, self.page_size_query_param, *self.filters}
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise ValidationError(
                {
                    name[:100]: f"Unknown query parameter; this listing takes: "
                    f"{', '.join(sorted(known))}."
                    for name in unknown
                }
            )
        return super().paginate_queryset(queryset, request, view)

    def get_page_size(self, request: Request) -> int | None:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = int(raw) if raw.isascii() and raw.isdigit() else 0
        if not 1 <= size <= self.max_page_size:
            raise ValidationError(
                {
                    self.page_size_query_param: f"Give an integer from 1 to "
                    f"{self.max_page_size}, not {raw[:40]!r}."
                }
            )
        return size


class NewestFirst(StrictPageSize):
    ordering = "-created_at"
    filters = frozenset(
        ["state", "kind", "task", "queue", "periodic_task", "created_after", "created_before"]
    )
    invalid_cursor_message = (
        "Invalid cursor: pass the `next` or `previous` URL of a listing back unchanged."
    )

    def decode_cursor(self, request: Request) -> Cursor | None:
        # DRF answers a malformed cursor with 404, which reads as "no such list"; it is
        # a bad request parameter. A cursor whose position is not a time (the ordering's
        # field) would reach the database and fail there: refuse it here too.
        if not request.query_params.get(self.cursor_query_param):
            return None  # absent or empty: the first page
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise InvalidCursor({"cursor": self.invalid_cursor_message}) from None
        if cursor is not None and cursor.position is not None and _when(cursor.position) is None:
            raise InvalidCursor({"cursor": self.invalid_cursor_message})
        return cursor


FILTERS = [
    OpenApiParameter("state", OpenApiTypes.STR, enum=list(JobState.values)),
    OpenApiParameter("kind", OpenApiTypes.STR, enum=list(JobKind.values)),
    OpenApiParameter("task", OpenApiTypes.STR, description="Registered task name."),
    OpenApiParameter("queue", OpenApiTypes.STR),
    OpenApiParameter(
        "periodic_task", OpenApiTypes.STR, description="Runs of this periodic task (its name)."
    ),
    OpenApiParameter(
        "created_after",
        OpenApiTypes.DATETIME,
        description="Only jobs created at or after this time (ISO 8601).",
    ),
    OpenApiParameter(
        "created_before",
        OpenApiTypes.DATETIME,
        description="Only jobs created before this time (ISO 8601).",
    ),
]

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    location=OpenApiParameter.HEADER, type=OpenApiTypes.STR, **idempotency.describe_header()
)


# Query parameters with a fixed set of values, checked before the query runs.
CHOICES = {"state": JobState.values, "kind": JobKind.values}
# Date-range filters: parameter -> lookup on ``created_at``.
DATE_RANGE = {"created_after": "created_at__gte", "created_before": "created_at__lt"}


def list_filters(params: Any) -> dict[str, Any]:
    """The listing's filters as ORM lookups; ``ValidationError`` names a bad parameter."""
    errors: dict[str, str] = {}
    lookups: dict[str, Any] = {}
    for param, field in (
        ("state", "state"),
        ("kind", "kind"),
        ("task", "task_name"),
        ("queue", "queue"),
        ("periodic_task", "periodic_task"),
    ):
        value = params.get(param)
        # An empty name filter is no filter; an empty state or kind names none (400 below).
        if value is None or (not value and param not in CHOICES):
            continue
        if "\x00" in value:
            # No name holds a NUL, and PostgreSQL refuses one in a query (a 500 otherwise).
            errors[param] = f"{param} must not contain a NUL character."
            continue
        if param in CHOICES and value not in CHOICES[param]:
            errors[param] = f"Unknown {param} {value!r}; one of {', '.join(CHOICES[param])}."
            continue
        lookups[field] = value
    for param, lookup in DATE_RANGE.items():
        value = params.get(param)
        if value is None:
            continue
        when = _when(value)
        if when is None:
            errors[param] = (
                f"{param}={value!r} is not a date and time; use ISO 8601, "
                "e.g. 2030-01-31T12:00:00Z."
            )
            continue
        lookups[lookup] = when
    if errors:
        raise ValidationError(errors)
    return lookups


# A job's rows below it: steps, nested workflows' steps (MAX_DEPTH levels) and callbacks.
TREE = ["steps", "steps__steps", "steps__steps__steps", "steps__steps__steps__steps"]

CONFLICT = OpenApiResponse(
    description="job_not_finished (wait or cancel first), job_is_a_step (act on its "
    "workflow) or not_rerunnable."
)
NOT_FOUND = OpenApiResponse(description="No such job, or not yours.")


class JobViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Jobs the caller submitted (staff see everyone's)."""

    pagination_class = NewestFirst
    serializer_class = JobSerializer

    def get_queryset(self) -> QuerySet[Job]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return Job.objects.none()
        jobs = Job.objects.all()
        if self.action == "list":
            # Steps are listed inside their workflow, not as jobs of their own.
            jobs = jobs.filter(parent__isnull=True)
        if not self.request.user.is_staff:
            jobs = jobs.filter(owner=self.request.user)
        if self.action == "list":
            jobs = jobs.filter(**list_filters(self.request.query_params))
        if self.action == "retrieve":
            jobs = jobs.prefetch_related(*TREE, "progress_events")
        return jobs

    def get_serializer_class(self) -> type[Any]:
        return JobDetailSerializer if self.action == "retrieve" else JobSerializer

    @extend_schema(parameters=FILTERS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Your jobs, newest first; filter by state, kind, task, queue and creation time."""
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=SubmitTaskSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            201: JobSerializer,
            200: OpenApiResponse(
                JobSerializer, description="Idempotent replay: the job the key made."
            ),
            422: OpenApiResponse(description="The Idempotency-Key was used with another request."),
        },
    )
    def create(self, request: Request) -> Response:
        """Submit one registered task (``Idempotency-Key`` makes a retry safe)."""

        def make(key: Idempotency | None) -> Job:
            submission = SubmitTaskSerializer(data=request.data)
            submission.is_valid(raise_exception=True)
            return services.submit_task(
                step=submission.step(),
                options=submission.options(),
                owner=request.user,
                idempotency=key,
            )

        return _submit_once(
            request, make, lambda job: JobSerializer(job, context={"request": request}).data
        )

    @extend_schema(
        request=BulkSubmitSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            201: BulkResultSerializer,
            200: OpenApiResponse(
                BulkResultSerializer, description="Idempotent replay: the jobs the key made."
            ),
            422: OpenApiResponse(description="The Idempotency-Key was used with another request."),
            503: OpenApiResponse(
                description="broker_unavailable: the jobs in `queued` were published and "
                "will run; the others were not and left nothing."
            ),
        },
    )
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        """Submit many tasks in one request: one transaction, one message per job after
        commit, at most ``TIDE_BULK_MAX_JOBS``; one bad item refuses them all."""
        submission = BulkSubmitSerializer(data=request.data)
        submission.is_valid(raise_exception=True)
        items = submission.items()
        key = idempotency.from_request(request)
        keys = idempotency.for_items(key, len(items)) if key else None
        found = idempotency.earlier_items(request, keys) if keys else {}
        missing = [index for index in range(len(items)) if index not in found]
        try:
            made = services.submit_tasks(
                [items[index] for index in missing],
                owner=request.user,
                idempotency=[keys[index] for index in missing] if keys else None,
            )
        except IntegrityError:
            # A retry with the same key committed first: answer with what it made.
            if keys is None:
                raise
            found, made, missing = idempotency.earlier_items(request, keys), [], []
        JOBS_SUBMITTED.labels(JobKind.TASK).inc(len(made))
        jobs = {**found, **dict(zip(missing, made, strict=True))}
        context = {"request": request}
        body = {"jobs": [JobSerializer(jobs[i], context=context).data for i in sorted(jobs)]}
        return Response(body, status=status.HTTP_201_CREATED if made else status.HTTP_200_OK)

    @extend_schema(
        responses={
            204: OpenApiResponse(description="Deleted, with its steps and progress history."),
            404: NOT_FOUND,
            409: CONFLICT,
        }
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete a finished job (a workflow with its steps); unfinished jobs are refused
        with 409: cancel them first."""
        services.delete_job(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=None,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            201: JobDetailSerializer,
            200: OpenApiResponse(
                JobDetailSerializer, description="Idempotent replay: the job the key made."
            ),
            404: NOT_FOUND,
            409: CONFLICT,
            422: OpenApiResponse(description="The Idempotency-Key was used with another request."),
        },
    )
    @action(detail=True, methods=["post"])
    def rerun(self, request: Request, pk: str | None = None) -> Response:
        """Submit a finished job again as a new job (same task or workflow, arguments,
        queue, priority, limits, retry policy; no eta or expiry); ``rerun_of`` points back."""
        original = self.get_object()
        return _submit_once(
            request,
            lambda key: services.rerun_job(original, owner=request.user, idempotency=key),
            lambda job: _detail(request, job),
        )

    @extend_schema(request=CancelSerializer, responses={200: JobDetailSerializer, 404: NOT_FOUND})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel a job: waiting work (queued, scheduled, between retries) ends ``revoked``
        now; running work keeps its state, with ``cancel_requested_at`` set, until the
        worker reports its end (``revoked`` when ``terminate`` stopped it). A workflow is
        cancelled with its steps; a chain step with the steps after it, a chord header
        step with the callback. Finished work is left as it is."""
        options = CancelSerializer(data=request.data)
        options.is_valid(raise_exception=True)
        job = services.cancel_job(self.get_object(), terminate=options.validated_data["terminate"])
        return Response(_detail(request, job))


def _answer(body: Any, code: int) -> Response:
    """A submission's answer: the job, with its URL in ``Location``."""
    return Response(body, status=code, headers={"Location": body["url"]})


def _submit_once(
    request: Request,
    make: Callable[[Idempotency | None], Job],
    render: Callable[[Job], Any],
) -> Response:
    """Make one job per ``Idempotency-Key``: 201 with the job ``make`` made, or 200 with the
    job the key made before (a replay, or the loser of two racing retries, whose insert
    the unique (owner, key) constraint refused)."""
    key = idempotency.from_request(request)
    if key is not None and (job := idempotency.earlier(request, key)) is not None:
        return _answer(render(job), status.HTTP_200_OK)
    try:
        job = make(key)
    except IntegrityError:
        if key is None or (job := idempotency.earlier(request, key)) is None:
            raise
        return _answer(render(job), status.HTTP_200_OK)
    JOBS_SUBMITTED.labels(job.kind).inc()
    return _answer(render(job), status.HTTP_201_CREATED)


def _detail(request: Request, job: Job) -> Any:
    """A job as ``JobDetailSerializer`` renders it, steps in order."""
    return JobDetailSerializer(with_steps(job), context={"request": request}).data


def with_steps(job: Job) -> Job:
    """The job with its steps in workflow order and its progress history, for rendering."""
    return Job.objects.prefetch_related(*TREE, "progress_events").get(id=job.id)


class WorkflowView(APIView):
    @extend_schema(
        request=SubmitWorkflowSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            201: JobDetailSerializer,
            200: OpenApiResponse(
                JobDetailSerializer, description="Idempotent replay: the job the key made."
            ),
            422: OpenApiResponse(description="The Idempotency-Key was used with another request."),
        },
    )
    def post(self, request: Request) -> Response:
        """Submit a chain, group or chord of registered tasks and nested workflows
        (``Idempotency-Key`` makes a retry safe)."""

        def make(key: Idempotency | None) -> Job:
            submission = SubmitWorkflowSerializer(data=request.data)
            submission.is_valid(raise_exception=True)
            steps, callback = submission.steps_and_callback()
            return services.submit_workflow(
                kind=JobKind(submission.validated_data["type"]),
                steps=steps,
                callback=callback,
                options=submission.options(),
                owner=request.user,
                idempotency=key,
            )

        return _submit_once(request, make, lambda job: _detail(request, job))


class ById(StrictPageSize):
    ordering = "id"

    def decode_cursor(self, request: Request) -> Cursor | None:
        if not request.query_params.get(self.cursor_query_param):
            return None  # absent or empty: the first page
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise InvalidCursor({"cursor": NewestFirst.invalid_cursor_message}) from None
        if cursor is not None and cursor.position is not None:
            try:
                int(cursor.position)
            except ValueError:
                raise InvalidCursor({"cursor": NewestFirst.invalid_cursor_message}) from None
        return cursor


PERIODIC_REFUSALS = {
    400: OpenApiResponse(description="invalid, unknown_task or invalid_arguments."),
    404: OpenApiResponse(description="No such periodic task, or not yours."),
}


@extend_schema_view(
    list=extend_schema(responses={200: PeriodicTaskSerializer(many=True)}),
    retrieve=extend_schema(responses={200: PeriodicTaskSerializer, **PERIODIC_REFUSALS}),
    create=extend_schema(responses={201: PeriodicTaskSerializer, **PERIODIC_REFUSALS}),
    update=extend_schema(responses={200: PeriodicTaskSerializer, **PERIODIC_REFUSALS}),
    partial_update=extend_schema(responses={200: PeriodicTaskSerializer, **PERIODIC_REFUSALS}),
    destroy=extend_schema(
        responses={204: OpenApiResponse(description="Deleted."), 404: PERIODIC_REFUSALS[404]}
    ),
)
class PeriodicTaskViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Periodic tasks you made (staff see every one, the admin's too). Beat runs them;
    each run is a job (``GET /api/jobs/?periodic_task=<name>``). Pause: PATCH enabled=false."""

    serializer_class = PeriodicTaskSerializer
    pagination_class = ById

    def get_queryset(self) -> QuerySet[Any]:
        from django_celery_beat.models import PeriodicTask

        tasks = PeriodicTask.objects.select_related("interval", "crontab", "clocked")
        if getattr(self, "swagger_fake_view", False):
            return tasks.none()
        if not self.request.user.is_staff:
            tasks = tasks.filter(tide_owner__owner=self.request.user)
        return tasks

    def perform_create(self, serializer: PeriodicTaskSerializer) -> None:
        from tide.jobs import periodic

        serializer.instance = periodic.create(serializer.spec(), owner=self.request.user)

    def perform_update(self, serializer: PeriodicTaskSerializer) -> None:
        from tide.jobs import periodic

        serializer.instance = periodic.change(serializer.instance, serializer.spec())

    def perform_destroy(self, instance: Any) -> None:
        from tide.jobs import periodic

        periodic.delete(instance)


class TaskListView(APIView):
    @extend_schema(responses={200: TaskInfoSerializer(many=True)})
    def get(self, request: Request) -> Response:
        """The tasks this deployment accepts, with their parameters and default queue."""
        return Response([describe(name) for name in registered_tasks()])


class QueueListView(APIView):
    @extend_schema(responses={200: QueueInfoSerializer(many=True)})
    def get(self, request: Request) -> Response:
        """Queues known from configuration and routes, with the tasks routed to each and
        their live figures (waiting, in flight, scheduled, oldest age) read from the broker.
        If the broker cannot be read, the figures are null and ``metrics_error`` says why."""
        from tide.exporter import read_queues

        tasks = [describe(name) for name in registered_tasks()]
        names = known_queues()
        error = ""
        try:
            stats = {s.name: s for s in read_queues(names)}
        except Exception as exc:  # an unreadable broker must not hide the queue list
            stats, error = {}, f"{type(exc).__name__}: {exc}"
        body = []
        for queue in names:
            live = stats.get(queue)
            body.append(
                {
                    "name": queue,
                    "tasks": [t["name"] for t in tasks if t["queue"] == queue],
                    "waiting": live.waiting if live else None,
                    "inflight": live.inflight if live else None,
                    "scheduled": live.scheduled if live else None,
                    "oldest_age_seconds": live.oldest_age if live else None,
                    "source": live.source if live else None,
                    "metrics_error": error or None,
                }
            )
        return Response(body)
