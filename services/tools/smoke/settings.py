"""What the smoke test needs to reach a deployment: the services' own variables, and three of its own."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from services.common.app.settings import BrokerSettings, StorageSettings, TopologySettings, connection_url_secrets


class SmokeSettings(BrokerSettings, StorageSettings, TopologySettings):
    """RABBITMQ_URL, R2_*, VIXEN_TOPOLOGY_PREFIX as the services read them; the worker's endpoint and credentials
    as the gateway reads them; the public API's URL, a caller's token (or the key to mint one) and an avatar of
    that caller with a ready LoRA."""

    content_url: str = Field(validation_alias="SMOKE_CONTENT_URL")
    avatar_id: str = Field(validation_alias="SMOKE_AVATAR_ID")
    token: SecretStr | None = Field(default=None, validation_alias="SMOKE_TOKEN")
    # Development deployments: a token minted with the services' HS256 key for SMOKE_SUBJECT.
    auth_jwt_secret: SecretStr | None = Field(default=None, validation_alias="AUTH_JWT_SECRET")
    subject: str = Field(default="smoke-test", validation_alias="SMOKE_SUBJECT")
    # As the services read them: a deployment that names an audience and an issuer refuses tokens without them.
    auth_audience: str | None = Field(default=None, validation_alias="AUTH_AUDIENCE")
    auth_issuer: str | None = Field(default=None, validation_alias="AUTH_ISSUER")
    # The worker: the async submit endpoint when there is one (it validates without starting a GPU), else the sync one.
    modal_submit_url: str | None = Field(default=None, validation_alias="MODAL_SUBMIT_URL")
    modal_endpoint_url: str | None = Field(default=None, validation_alias="MODAL_ENDPOINT_URL")
    modal_api_key: SecretStr | None = Field(default=None, validation_alias="MODAL_API_KEY")
    modal_api_token: SecretStr | None = Field(default=None, validation_alias="MODAL_API_TOKEN")
    width: int = Field(default=64, ge=64, le=2048, validation_alias="SMOKE_WIDTH")
    steps: int = Field(default=2, ge=1, le=100, validation_alias="SMOKE_STEPS")
    wait_seconds: int = Field(default=60, ge=1, le=60, validation_alias="SMOKE_WAIT_SECONDS")

    @model_validator(mode="after")
    def _reachable(self) -> SmokeSettings:
        if self.token is None and self.auth_jwt_secret is None:
            raise ValueError("set SMOKE_TOKEN (a caller's bearer token) or AUTH_JWT_SECRET (to mint one)")
        if not (self.modal_submit_url or self.modal_endpoint_url):
            raise ValueError("set MODAL_SUBMIT_URL or MODAL_ENDPOINT_URL (the worker's endpoint)")
        return self

    def bearer(self) -> str:
        """The caller's token: SMOKE_TOKEN, else one minted for SMOKE_SUBJECT."""
        if self.token is not None:
            return self.token.get_secret_value()
        from services.common.auth import mint_token

        assert self.auth_jwt_secret is not None
        return mint_token(
            self.auth_jwt_secret.get_secret_value(),
            self.subject,
            ttl_seconds=600,
            audience=self.auth_audience or None,
            issuer=self.auth_issuer or None,
        )

    def secret_values(self) -> list[str]:
        """Every secret, for the log's redaction: the secret settings and the passwords in URLs."""
        secret = [getattr(self, name) for name in type(self).model_fields]
        values = [value.get_secret_value() for value in secret if isinstance(value, SecretStr)]
        return values + connection_url_secrets(self)
