from __future__ import annotations

from typing import Any

from django.db.models import F, Func, JSONField
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from live.services import last_event_id

from .models import TASK_JSON_FIELDS, Task, task_json
from .registry import all_workloads

RECENT_TASKS_ON_PAGE = 20
# The page shows a task's parameters in one line, and at most 500 characters
# of them in its tooltip (static/tasklight/app.js, renderRow): a longer string
# is cut, with an ellipsis, and shows the same. A text_stats text of 1 MiB
# made each such task a megabyte of HTML: 20 MB for a page of them, ~1 s to
# render on the server and ~1.4 s to load in Chromium (docs/benchmarks.md,
# "Large tasks"). The API and the events carry the whole value.
PAGE_TEXT_CHARS = 500
# Of a result, the page shows at most the first 2,000 characters of its JSON
# (the tooltip; 300 in the row): a string cut to 2,000 characters leaves them
# as they were, whatever comes before it.
PAGE_RESULT_CHARS = 2000


def _shown(value: Any, chars: int = PAGE_TEXT_CHARS) -> Any:
    """``value`` with every string longer than ``chars`` cut to it, its last
    character an ellipsis; keys are kept whole. Python's copy of
    tasklight_cut_strings (workloads/migrations/0009_cut_strings_function.py)."""
    if isinstance(value, str):
        return value if len(value) <= chars else value[: chars - 1] + "\u2026"
    if isinstance(value, dict):
        return {key: _shown(item, chars) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown(item, chars) for item in value]
    return value


class CutStrings(Func):
    """A JSON column as the page shows it, cut by the database: PostgreSQL
    sends a task's 1 MiB text as its first 500 characters instead of the
    whole (20 MB for a page of such tasks). The function is called only on
    a value that may hold a longer string: most are a few bytes of JSON,
    which its call would slow down. SQLite (embedded mode, one user's
    machine) has no such function: it reads the column whole and ``_shown``
    cuts it in Python, the same cut."""

    output_field = JSONField()

    def __init__(self, column: str, chars: int) -> None:
        super().__init__(F(column))
        self.chars = int(chars)

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return compiler.compile(self.get_source_expressions()[0])

    def as_postgresql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        column, params = compiler.compile(self.get_source_expressions()[0])
        cut = f"tasklight_cut_strings({column}, {self.chars})"
        # A string of more than `chars` characters makes the JSON text longer
        # than `chars` bytes; pg_column_size (stored, maybe compressed) is
        # read first: it takes no decompression.
        sql = (
            f"CASE WHEN pg_column_size({column}) > {self.chars} THEN {cut}"
            f" WHEN octet_length(({column})::text) > {self.chars} THEN {cut} ELSE {column} END"
        )
        return sql, (*params, *params, *params, *params, *params)


# What the page reads of a task: the columns task_json needs, its params and
# result cut (aliases: an annotation may not take a field's name).
PLAIN_FIELDS = tuple(name for name in TASK_JSON_FIELDS if name not in ("params", "result"))
CUT_FIELDS = {
    "params": ("page_params", PAGE_TEXT_CHARS),
    "result": ("page_result", PAGE_RESULT_CHARS),
}


def _recent_tasks(owner: Any, count: int) -> list[dict[str, Any]]:
    """The owner's ``count`` newest tasks as the page's script first draws
    them: their JSON, long strings of their parameters and result cut (by
    PostgreSQL already; a cut string is not cut again)."""
    cut = {alias: CutStrings(name, chars) for name, (alias, chars) in CUT_FIELDS.items()}
    rows = Task.objects.filter(owner=owner).values(*PLAIN_FIELDS, **cut)[:count]
    tasks = []
    for row in rows:
        for name, (alias, chars) in CUT_FIELDS.items():
            row[name] = _shown(row.pop(alias), chars)
        tasks.append(task_json(row))
    return tasks


def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return render(request, "home.html", {"workloads": all_workloads()})
    # The event id is read before the tasks: the page reflects at least that
    # event, and its socket resumes from it, so nothing slips in between.
    event_id = last_event_id(request.user.pk)
    # One more than shown: whether "Show older tasks" has any to show.
    tasks = _recent_tasks(request.user, RECENT_TASKS_ON_PAGE + 1)
    return render(
        request,
        "home.html",
        {
            "last_event_id": event_id,
            "tasks": tasks[:RECENT_TASKS_ON_PAGE],
            "has_older_tasks": len(tasks) > RECENT_TASKS_ON_PAGE,
            "workload_schemas": [workload.describe() for workload in all_workloads()],
        },
    )
