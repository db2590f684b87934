from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Ledger"

    def ready(self) -> None:
        # The statement PDF job kind registers itself on import, in the web process and in workers.
        from accounts import reports  # noqa: F401
