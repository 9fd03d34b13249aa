"""Periodic jobs: what ``@app.periodic(...)`` declares, validated when the module loads.

A :class:`Schedule` says "enqueue this task with these arguments at every tick of this
cron expression in this time zone". Workers register the App's schedules in
``<schema>.cron_schedules`` when they start and enqueue each tick exactly once between
them (:mod:`pgjobs.periodic_scheduler`); nothing here touches the database.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import cron as cronlib
from .errors import ConfigurationError
from .payload import dump_args
from .task import Task, validate_task_name

if TYPE_CHECKING:
    from .app import App

T = TypeVar("T", bound=Task[Any, Any])

DEFAULT_MAX_DELAY = 600.0
DEFAULT_TIMEZONE = "UTC"


@dataclass(frozen=True)
class Schedule:
    """One periodic schedule of an App (see :meth:`pgjobs.App.periodic`)."""

    name: str
    cron: cronlib.Cron
    task: str
    queue: str
    args: Mapping[str, Any]
    args_json: str
    priority: int
    max_attempts: int
    max_delay: float
    """Seconds: a tick seen later than this after its time is recorded as missed."""

    @property
    def expression(self) -> str:
        """The cron expression as written."""
        return self.cron.expression

    @property
    def timezone(self) -> str:
        """The IANA time zone the expression is evaluated in."""
        return self.cron.timezone


def define(
    app: App,
    task: Task[Any, Any],
    *,
    cron: str,
    timezone: str = DEFAULT_TIMEZONE,
    args: Mapping[str, Any] | None = None,
    name: str | None = None,
    max_delay: float = DEFAULT_MAX_DELAY,
) -> Schedule:
    """Validate a schedule of ``task``; raise :class:`ConfigurationError` saying what to fix."""
    if not isinstance(task, Task):
        raise ConfigurationError(
            f"@app.periodic must be stacked above @app.task (it decorates a task, got "
            f"{_describe(task)}): write @app.periodic(...) on the line above @app.task(...)"
        )
    if task.app is not app:
        raise ConfigurationError(
            f"task {task.name!r} belongs to another App: schedule it with that App's "
            "periodic decorator"
        )
    schedule_name = task.name if name is None else name
    try:
        validate_task_name(schedule_name)
    except ValueError as exc:
        raise ConfigurationError(f"periodic schedule name: {exc}") from None
    where = f"periodic schedule {schedule_name!r} (task {task.name!r})"
    try:
        parsed = cronlib.parse(cron, timezone)
    except cronlib.CronError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if isinstance(max_delay, bool) or not isinstance(max_delay, int | float) \
            or not math.isfinite(max_delay) or max_delay <= 0:
        raise ConfigurationError(
            f"{where}: max_delay must be a positive number of seconds, got {max_delay!r}")
    if args is not None and not isinstance(args, Mapping):
        raise ConfigurationError(
            f"{where}: args must be a dict of keyword arguments, got {type(args).__name__}")
    kwargs = dict(args or {})
    _check_signature(task, kwargs, where)
    try:
        args_json = dump_args(task.name, kwargs, app.max_args_bytes)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    return Schedule(
        name=schedule_name, cron=parsed, task=task.name, queue=task.queue,
        args=json.loads(args_json), args_json=args_json, priority=task.priority,
        max_attempts=task.max_attempts, max_delay=float(max_delay),
    )


def decorator(app: App, **options: Any) -> Callable[[T], T]:
    """What ``app.periodic(**options)`` returns: registers a schedule, returns the task."""

    def register(task: T) -> T:
        schedule = define(app, task, **options)
        existing = app.schedules.get(schedule.name)
        if existing is not None and existing != schedule:
            raise ConfigurationError(
                f"two periodic schedules are named {schedule.name!r}; give one of them "
                "name=... (the default name is the task's name)"
            )
        app.schedules[schedule.name] = schedule
        return task

    return register


def _check_signature(task: Task[Any, Any], kwargs: dict[str, Any], where: str) -> None:
    try:
        signature = inspect.signature(task.fn)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            f"{where}: args {kwargs!r} do not match {task.fn.__name__}{signature} ({exc}); "
            "pass every required parameter by name in args={...}"
        ) from None


def _describe(value: Any) -> str:
    if inspect.isfunction(value):
        return f"function {value.__qualname__}"
    return type(value).__name__
