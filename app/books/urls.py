"""The article's demos as routes. These paths are a contract: tests and users rely on them."""

from django.urls import path

from books import views

urlpatterns = [
    path("", views.index, name="index"),
    path("now/", views.current_datetime, name="now"),
    path("async/", views.AsyncView.as_view(), name="async"),
    path("books/", views.BookListView.as_view(), name="books"),
    path("books/<int:book_id>/", views.book_detail, name="book"),
    path("books/embed/", views.embed, name="books-embed"),
    path("books/stream/", views.book_stream, name="books-stream"),
    path("books/updates/", views.book_updates, name="books-updates"),
    path("sync-wrapped/", views.sync_wrapped, name="sync-wrapped"),
    path("events/", views.events, name="events"),
]
