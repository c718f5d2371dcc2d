"""Admin commands (not Dagster ops): instance bootstrap, the token-guarded webserver front and the studio server."""
