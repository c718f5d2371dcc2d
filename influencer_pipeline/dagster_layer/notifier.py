"""The `notifier` resource: where run notifications go (webhooks, Slack) and the secret that signs them."""

from __future__ import annotations

import dagster as dg

from influencer_pipeline.dagster_layer.settings import NotifierSettings
from influencer_pipeline.notify import NotificationError, RunEvent, Webhook, notify


class NotifierResource(dg.ConfigurableResource):
    """Where run notifications go, and the secret that signs them."""

    webhook_urls: str = ""  # comma-separated; from dg.EnvVar("NOTIFY_WEBHOOK_URLS")
    slack_webhook_url: str = ""  # from dg.EnvVar("NOTIFY_SLACK_WEBHOOK_URL")
    webhook_secret: str = ""  # from dg.EnvVar("NOTIFY_WEBHOOK_SECRET")
    ui_url: str = ""  # from dg.EnvVar("DAGSTER_UI_URL")

    def webhooks(self) -> list[Webhook]:
        generic = [Webhook(url.strip()) for url in self.webhook_urls.split(",") if url.strip()]
        slack = [Webhook(self.slack_webhook_url.strip(), "slack")] if self.slack_webhook_url.strip() else []
        return generic + slack

    def run_url(self, run_id: str) -> str | None:
        return f"{self.ui_url.rstrip('/')}/runs/{run_id}" if self.ui_url else None

    def send(self, event: RunEvent) -> list[str]:
        """Deliver to every configured webhook; returns their redacted names (empty when none is configured).

        Generic webhooks must be signed: an unsigned notification could be forged by anyone who learns the URL,
        so a missing secret is an error rather than a silent downgrade.
        """
        webhooks = self.webhooks()
        if any(hook.format == "json" for hook in webhooks) and not self.webhook_secret:
            raise NotificationError(
                "NOTIFY_WEBHOOK_URLS is set but NOTIFY_WEBHOOK_SECRET is not: generic webhooks are HMAC-signed. "
                "Fix: set NOTIFY_WEBHOOK_SECRET to the secret your receiver verifies with."
            )
        if not webhooks:
            return []
        return notify(webhooks, event, self.webhook_secret or None)


def notifier_for(settings: NotifierSettings) -> NotifierResource:
    """The `notifier` resource from the NOTIFY_* variables and DAGSTER_UI_URL, each an EnvVar (unset: no such
    webhook); a URL may carry user:password@ (a proxy's basic auth), so none is passed as a plain string."""
    return NotifierResource(
        webhook_urls=settings.webhook_urls.env_var_or_empty(),
        slack_webhook_url=settings.slack_webhook_url.env_var_or_empty(),
        webhook_secret=settings.webhook_secret.env_var_or_empty(),
        ui_url=settings.ui_url.env_var_or_empty(),
    )
