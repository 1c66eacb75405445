"""The books app's own first migration, unchanged."""

from importlib import import_module

Migration = import_module("books.migrations.0001_initial").Migration
