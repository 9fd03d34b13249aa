"""`pgjobs enqueue TASK`: enqueue a job by task name and print its id."""

from __future__ import annotations

import difflib
import inspect
from typing import Annotated, Any

import typer

from ..config import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE
from ..errors import QueueFull
from ..payload import DEFAULT_MAX_ARGS_BYTES, dump_args
from ..task import (
    MAX_UNIQUE_KEY_LENGTH,
    JobSpec,
    Task,
    validate_delay,
    validate_max_attempts,
    validate_priority,
    validate_queue,
    validate_task_name,
)
from .common import SETTINGS, connect, fail, parse_json_object


def enqueue(
    task: Annotated[str, typer.Argument(
        help="Task name, as registered (<module>.<function> unless name= was given). Checked "
             "only with --app.")],
    args: Annotated[str, typer.Option("--args", help="Keyword arguments as a JSON object.")] = "{}",
    app: Annotated[str | None, typer.Option(
        "--app", help="Your App as module:attribute: refuse an unknown task name, check "
        "--args against the handler, and use the task's own queue, max_attempts and "
        "priority. Without it the task name is NOT checked and the job goes to --queue "
        f"(default {DEFAULT_QUEUE!r}).", show_default=False)] = None,
    queue: Annotated[str | None, typer.Option(
        help=f"Queue to put the job on. Default: the task's queue with --app, else "
             f"{DEFAULT_QUEUE!r}.", show_default=False)] = None,
    delay: Annotated[float, typer.Option(help="Seconds before the job may run.")] = 0.0,
    priority: Annotated[int | None, typer.Option(
        help="Higher runs first (smallint). Default: the task's with --app, else 0.",
        show_default=False)] = None,
    max_attempts: Annotated[int | None, typer.Option(
        help=f"Attempts before dead letters. Default: the task's with --app, else "
             f"{DEFAULT_MAX_ATTEMPTS}.", show_default=False)] = None,
    unique_key: Annotated[
        str | None, typer.Option(help="Skip if a live job holds this key.", show_default=False)
    ] = None,
) -> None:
    """Enqueue a job by task name and print its id (with --app, the name is checked)."""
    kwargs = parse_json_object(args, "--args")
    if unique_key is not None and (not unique_key or len(unique_key) > MAX_UNIQUE_KEY_LENGTH):
        fail(f"--unique-key must be 1 to {MAX_UNIQUE_KEY_LENGTH} characters")
    if app is not None:
        job_id = _enqueue_with_app(app, task, kwargs, queue=queue, delay=delay,
                                   priority=priority, max_attempts=max_attempts,
                                   unique_key=unique_key)
    else:
        job_id = _enqueue_by_name(task, kwargs, queue=queue, delay=delay, priority=priority,
                                  max_attempts=max_attempts, unique_key=unique_key)
    print(job_id)


def _enqueue_by_name(task: str, kwargs: dict[str, Any], *, queue: str | None, delay: float,
                     priority: int | None, max_attempts: int | None,
                     unique_key: str | None) -> int:
    """No App: the name is taken as given, defaults are pgjobs' own."""
    try:
        spec = JobSpec(
            task=validate_task_name(task),
            queue=validate_queue(queue if queue is not None else DEFAULT_QUEUE),
            args_json=dump_args(task, kwargs, DEFAULT_MAX_ARGS_BYTES),
            priority=validate_priority(priority if priority is not None else 0),
            delay=validate_delay(delay),
            unique_key=unique_key,
            max_attempts=validate_max_attempts(
                max_attempts if max_attempts is not None else DEFAULT_MAX_ATTEMPTS),
        )
    except (TypeError, ValueError) as exc:
        fail(str(exc))
    from ..app import App

    the_app = App(SETTINGS.url(), schema=SETTINGS.resolved_schema())
    with connect(url=the_app.database_url) as conn:
        try:
            job_id = the_app._enqueuer.enqueue_one(conn, spec)
        except QueueFull as exc:
            fail(str(exc))
        conn.commit()
    return job_id


def _enqueue_with_app(app: str, task: str, kwargs: dict[str, Any], *, queue: str | None,
                      delay: float, priority: int | None, max_attempts: int | None,
                      unique_key: str | None) -> int:
    """The App's task: its queue, max_attempts and priority unless overridden."""
    from .work import load_app

    the_app = load_app(app)
    found = the_app.tasks.get(task)
    if found is None:
        fail(unknown_task_message(task, app, list(the_app.tasks)))
    _check_arguments(found, kwargs)
    try:
        bound = found.options(queue=queue, delay=delay, priority=priority,
                              max_attempts=max_attempts, unique_key=unique_key)
    except (TypeError, ValueError) as exc:
        fail(str(exc))
    with connect(url=the_app.database_url) as conn:
        try:
            job_id = bound.enqueue(conn, **kwargs)
        except QueueFull as exc:
            fail(str(exc))
        except (TypeError, ValueError) as exc:  # arguments that are not JSON, too large
            fail(str(exc))
        conn.commit()
    return job_id


def unknown_task_message(task: str, app: str, known: list[str]) -> str:
    """One line: the unknown name, the closest registered names, or what exists."""
    close = difflib.get_close_matches(task, known, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(repr(name) for name in close) + "?"
    elif known:
        hint = f"it has {len(known)} task(s), e.g. {sorted(known)[0]!r}"
    else:
        hint = "it registers no tasks"
    return f"unknown task {task!r} in {app}: {hint}"


def _check_arguments(task: Task[Any, Any], kwargs: dict[str, Any]) -> None:
    """Refuse --args the handler could never be called with (the job would only fail)."""
    try:
        signature = inspect.signature(task.fn)
    except (TypeError, ValueError):  # builtins and some C callables have none
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        params = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in signature.parameters.values())
        fail(f"--args do not fit task {task.name!r}({params}): {exc}")
