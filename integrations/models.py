"""Django finds this app's models here; they live in their integration's package."""
