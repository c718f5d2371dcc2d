"""Operations tooling: instance bootstrap and an authenticating front for dagster-webserver."""
