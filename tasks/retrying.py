"""When a task is worth trying again."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from billing.errors import SystemUnavailable, UserFacingError


def worth_retrying(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """An outage (``SystemUnavailable``) or an unexpected error is tried again after a pause; a user's mistake
    is not: it fails the same way (and a wrong password is one more failed login towards an ERP's lock-out)."""
    error = state.data if isinstance(state.data, BaseException) else None
    return isinstance(error, SystemUnavailable) or not isinstance(error, UserFacingError)
