from django.db import models

TITLE_MAX_LENGTH = 200


class Book(models.Model):
    title = models.CharField(max_length=TITLE_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)
    # Written by the background task books.tasks.summarize_book, which every
    # new book enqueues; announced to live pages like a new book (migration 0003).
    # db_default: a release that predates them still inserts books (docs/operations.md, "Migrations").
    summary = models.TextField(blank=True, default="", db_default="")
    summary_error = models.TextField(blank=True, default="", db_default="")
    summary_task_id = models.CharField(max_length=64, blank=True, default="", db_default="")

    class Meta:
        ordering = ["title", "id"]

    def __str__(self) -> str:
        return self.title

    @property
    def summary_status(self) -> str:
        return summary_status(self.summary, self.summary_error)


def summary_status(summary: str, error: str) -> str:
    """What a page shows of a book's task: done, failed, or still pending."""
    return "done" if summary else "failed" if error else "pending"
