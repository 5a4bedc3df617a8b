"""How the client shows what it follows: bars on a terminal, plain lines elsewhere, or the API's
own documents as JSON lines for scripts.

Each display is told of every new version of a job's document, of build-log text and of upload
bytes sent; `pause` holds a terminal's display still while the person is asked something.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
from rich.progress_bar import ProgressBar
from rich.text import Text

from app.client.steps import (
    ENDED,
    StepView,
    human_bytes,
    job_state,
    now,
    seconds_text,
    step_views,
)


class Display:
    """Shows nothing; the displays below show what they were made for."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the build log arrives on a thread of its own

    def job(self, document: dict[str, Any]) -> None:
        """A new version of the job's document (`{"data": job}`)."""

    def log(self, text: str) -> None:
        """Build-log text, as it was printed, in order."""

    def sent(self, done: int, total: int) -> None:
        """Bytes of an upload sent so far."""

    def note(self, message: str) -> None:
        """A line about the following itself (stopped, cancelled...)."""
        click.echo(message, err=True)

    @contextmanager
    def paused(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        """Done: what is shown stays as it is."""


def emit_json(document: Any) -> None:
    """One JSON document on one line of standard output."""
    click.echo(json.dumps(document, separators=(",", ":"), ensure_ascii=False))


class JsonDisplay(Display):
    """Every new version of the job's document as one line of JSON; nothing else."""

    def job(self, document: dict[str, Any]) -> None:
        with self.lock:
            emit_json(document)


class PlainDisplay(Display):
    """Lines without bars or colours: the build log on standard output as it was printed, what
    happens to the job and its steps on standard error."""

    def __init__(self) -> None:
        super().__init__()
        self.shown_state = ""
        self.shown_steps: dict[int, tuple[str, str]] = {}
        self.sent_tenth = -1
        self.log_ends_line = True

    def job(self, document: dict[str, Any]) -> None:
        job = document["data"]
        with self.lock:
            state = job_state(job)
            views = step_views(job)
            if not self.shown_state:
                self._status(f"job {job.get('id')}: {job.get('caption', '')} ({state})")
                if views:
                    self._status("steps: " + ", ".join(v.caption for v in views))
            elif state != self.shown_state and state not in ENDED:
                self._status(f"job {job.get('id')}: {state}")
            for index, view in enumerate(views, start=1):
                line = self._step_line(view, index, len(views))
                if line and self.shown_steps.get(index) != (view.status, line):
                    self.shown_steps[index] = (view.status, line)
                    self._status(line)
            if state != self.shown_state and state in ENDED:  # after its last steps
                self._status(f"job {job.get('id')}: {state}")
            self.shown_state = state

    @staticmethod
    def _step_line(view: StepView, index: int, count: int) -> str:
        name = f"step {index}/{count} {view.caption}"
        if view.status == "planned":
            return ""
        seconds = view.seconds(now())
        if view.status == "done":
            return f"{name}: done in {seconds_text(seconds or 0)}"
        if view.status == "failed":
            return f"{name}: failed after {seconds_text(seconds or 0)}"
        fraction, amount = view.fraction(), view.amount()
        if amount:
            percent = f" ({fraction:.0%})" if fraction is not None else ""
            return f"{name}: {amount}{percent}"
        return f"{name}: started"

    def log(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.log_ends_line = text.endswith("\n")

    def sent(self, done: int, total: int) -> None:
        tenth = done * 10 // total if total else 10
        if tenth != self.sent_tenth:
            self.sent_tenth = tenth
            self._status(f"upload: sent {human_bytes(done)} of {human_bytes(total)} "
                         f"({tenth * 10}%)")

    def note(self, message: str) -> None:
        with self.lock:
            self._status(message)

    def _status(self, line: str) -> None:
        if not self.log_ends_line and sys.stdout.isatty() and sys.stderr.isatty():
            click.echo()  # a log line cut midway is not run on into the status line
            self.log_ends_line = True
        click.echo(line, err=True)


class TerminalDisplay(Display):
    """Each planned step as a bar that fills as the step goes, with the build log scrolling above
    and an upload's bytes sent."""

    def __init__(self) -> None:
        super().__init__()
        self.console = Console()
        self.progress = Progress(
            TextColumn("{task.fields[mark]}"), TextColumn("{task.description:<14}"),
            _StepBar(bar_width=32), _AmountColumn(), _TimeColumn(),
            console=self.console, transient=False, refresh_per_second=8)
        self.tasks: list[Any] = []
        self.upload_task: Any = None
        self.shown_state = ""
        self.partial_line = ""
        self.running = False

    def _start(self) -> None:
        if not self.running:
            self.progress.start()
            self.running = True

    def job(self, document: dict[str, Any]) -> None:
        job = document["data"]
        with self.lock:
            state = job_state(job)
            if state != self.shown_state:
                self._print(f"[bold]job {job.get('id')}[/]: {job.get('caption', '')} "
                            f"[{_STATE_STYLE.get(state, 'cyan')}]{state}[/]")
                self.shown_state = state
            views = step_views(job)
            self._start()
            if len(self.tasks) != len(views):
                for task in self.tasks:
                    self.progress.remove_task(task)
                self.tasks = [self.progress.add_task(v.caption, **_bar(v)) for v in views]
            for task, view in zip(self.tasks, views, strict=True):
                self.progress.update(task, **_bar(view))

    def log(self, text: str) -> None:
        with self.lock:
            lines = (self.partial_line + text).split("\n")
            self.partial_line = lines.pop()
            for line in lines:
                self._print_text(line)

    def sent(self, done: int, total: int) -> None:
        with self.lock:
            self._start()
            if self.upload_task is None:
                self.upload_task = self.progress.add_task(
                    "Upload", total=total, mark="[cyan]›[/]", view=None)
            self.progress.update(self.upload_task, completed=done, total=total,
                                 mark="[green]✓[/]" if done >= total else "[cyan]›[/]")

    def note(self, message: str) -> None:
        with self.lock:
            self._print_text(message)

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self.lock:
            if self.running:
                self.progress.stop()
            try:
                yield
            finally:
                if self.running:
                    self.progress.start()

    def close(self) -> None:
        with self.lock:
            if self.partial_line:
                self._print_text(self.partial_line)
                self.partial_line = ""
            if self.running:
                self.progress.stop()
                self.running = False

    def _print(self, markup: str) -> None:
        self.progress.console.print(markup, highlight=False)

    def _print_text(self, line: str) -> None:
        self.progress.console.print(Text(line), highlight=False)


def _bar(view: StepView) -> dict[str, Any]:
    """How a step's bar shows it: its mark, and how full it is."""
    fraction = view.fraction()
    if view.status == "planned":
        mark, total, completed = "[dim]·[/]", 1.0, 0.0
    elif view.status == "done":
        mark, total, completed = "[green]✓[/]", 1.0, 1.0
    elif view.status == "failed":
        mark, total, completed = "[red]✗[/]", 1.0, fraction or 0.0
    else:  # a step telling nothing of how far it is pulses (_StepBar)
        mark, total, completed = "[cyan]›[/]", 1.0, fraction or 0.0
    return {"total": total, "completed": completed, "mark": mark, "view": view}


_STATE_STYLE = {"completed": "green", "error": "red", "expired": "red", "queued": "yellow"}


def _view(task: Any) -> StepView | None:
    return task.fields.get("view")


class _StepBar(BarColumn):
    """A bar that pulses while its step runs without telling how far it is."""

    def render(self, task: Any) -> ProgressBar:
        view = _view(task)
        return ProgressBar(
            total=task.total, completed=task.completed, width=self.bar_width,
            pulse=view is not None and view.status == "running" and view.fraction() is None,
            animation_time=task.get_time(), style=self.style,
            complete_style=self.complete_style, finished_style=self.finished_style,
            pulse_style=self.pulse_style)


class _AmountColumn(ProgressColumn):
    """`45%  12.3 MB of 45.6 MB` for a step telling its progress, bytes sent for an upload."""

    def render(self, task: Any) -> Text:
        view = _view(task)
        if view is None:  # the upload
            done, total = int(task.completed), int(task.total or 0)
            percent = f"{done / total:4.0%}" if total else ""
            return Text(f"{percent} {human_bytes(done)} of {human_bytes(total)}")
        fraction = view.fraction()
        percent = f"{fraction:4.0%}" if fraction is not None else "    "
        return Text(f"{percent} {view.amount()}".rstrip(), style="dim" if
                    view.status == "planned" else "")


class _TimeColumn(ProgressColumn):
    """The time a step took, or has taken so far, by the API's own times."""

    def render(self, task: Any) -> Text:
        view = _view(task)
        seconds = view.seconds(now()) if view is not None else task.elapsed
        return Text(seconds_text(seconds) if seconds is not None else "", style="dim")


def display_for(json_output: bool) -> Display:
    """JSON lines when asked for; bars when standard output is a terminal; plain lines else."""
    if json_output:
        return JsonDisplay()
    if sys.stdout.isatty():
        return TerminalDisplay()
    return PlainDisplay()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns aligned under their headers, as `docker ps` shows them."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                             ).rstrip())
