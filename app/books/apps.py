from django.apps import AppConfig


class BooksConfig(AppConfig):
    """The article's demos: async views, the async ORM and sync_to_async."""

    name = "books"
