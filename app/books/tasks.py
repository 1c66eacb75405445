"""The demo's background task: every new book gets a summary, written by the task worker (app/worker).

The view that creates a book enqueues summarize_book with aenqueue(); a
worker runs it, waits BOOK_SUMMARY_DELAY seconds (a slow external call, as
real tasks make) and writes the summary on the book, which live pages hear
of (books/live.py). A task that fails (the book is gone, bad input) is
recorded as FAILED on its result by the backend and its error written on
the book, shown where the summary would be; it is never retried by itself.
"""

import logging
import time

from django.conf import settings
from django.dispatch import receiver
from django.tasks import TaskResult, TaskResultStatus, task
from django.tasks.signals import task_finished

from books.models import Book
from worker.run import INTERRUPTED

logger = logging.getLogger(__name__)


@task
def summarize_book(book_id: int, request_id: str = "") -> str:
    """A plain-text summary of the book, stored on it. request_id: the request that enqueued it (its logs carry it)."""
    book = Book.objects.get(pk=book_id)  # gone: DoesNotExist, and the task fails
    if not book.title.strip():
        raise ValueError(f"book {book_id} has no title to summarise")
    logger.info("summarising book %d", book_id)
    time.sleep(settings.BOOK_SUMMARY_DELAY)
    words = book.title.split()
    summary = (
        f"“{book.title}”: {len(words)} word{'s' * (len(words) != 1)}, {len(book.title)} characters, "
        f"added {book.created_at:%Y-%m-%d %H:%M} UTC."
    )
    Book.objects.filter(pk=book_id).update(summary=summary, summary_error="")
    return summary


@receiver(task_finished)
def record_failure_on_the_book(sender: type, task_result: TaskResult, **kwargs: object) -> None:
    """A failed summarize_book writes its error where the summary would be: the page shows it, nothing waits forever."""
    if task_result.task.module_path != summarize_book.module_path or task_result.status != TaskResultStatus.FAILED:
        return
    book_id = task_result.args[0] if task_result.args else task_result.kwargs.get("book_id")
    error = task_result.errors[-1].exception_class_path if task_result.errors else "unknown error"
    if error == INTERRUPTED:
        return  # the worker stopped: the task is back in the queue
    Book.objects.filter(pk=book_id, summary="").update(summary_error=f"the summary failed: {error}")
