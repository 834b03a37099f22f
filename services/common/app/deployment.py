"""The deployment marker every service reads (VIXEN_ENVIRONMENT): production turns recommended settings into
required ones at start."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from services.common.app.settings import SecretCheckedSettings

Environment = Literal["development", "production"]
PRODUCTION: Environment = "production"


class DeploymentSettings(SecretCheckedSettings):
    """What kind of deployment runs this process: `development` (the default: the local stack, tests) or
    `production` (compose and Kubernetes set it; settings classes refuse to start without what it needs)."""

    vixen_environment: Environment = Field(default="development", validation_alias="VIXEN_ENVIRONMENT")

    @field_validator("vixen_environment", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        # "Production" is what was meant; "prod" or a typo still stops the start (never read as development).
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def is_production(self) -> bool:
        """Whether this is a production deployment."""
        return self.vixen_environment == PRODUCTION
