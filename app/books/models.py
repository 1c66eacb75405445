from django.db import models

TITLE_MAX_LENGTH = 200


class Book(models.Model):
    title = models.CharField(max_length=TITLE_MAX_LENGTH)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["title", "id"]

    def __str__(self) -> str:
        return self.title
