from django.contrib import admin
from django.http import HttpRequest

from books.models import Book
from books.tasks import summarize_book
from core import jsonlog


@admin.register(Book)
class BookAdmin(admin.ModelAdmin):
    list_display = ["title", "created_at", "summary_status"]
    search_fields = ["title"]
    readonly_fields = ["summary", "summary_error", "summary_task_id"]

    def save_model(self, request: HttpRequest, obj: Book, form: object, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:  # a new book, as from the API: its summary in the background
            # In the admin's transaction: if the save is rolled back, so is the task.
            result = summarize_book.enqueue(obj.pk, request_id=jsonlog.request_id.get())
            Book.objects.filter(pk=obj.pk).update(summary_task_id=result.id)
