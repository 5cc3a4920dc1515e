"""The KYC providers a deployment enables, built from settings."""

from __future__ import annotations

from gateway.kyc.base import KycProvider
from gateway.kyc.onfido import OnfidoProvider
from gateway.kyc.persona import PersonaProvider
from gateway.kyc.stripe_identity import StripeIdentityProvider
from gateway.settings import KycProviderSettings, Settings

ADAPTERS: dict[str, type[OnfidoProvider | PersonaProvider | StripeIdentityProvider]] = {
    "onfido": OnfidoProvider,
    "persona": PersonaProvider,
    "stripe_identity": StripeIdentityProvider,
}


def providers_from_settings(settings: Settings) -> dict[str, KycProvider]:
    """Every configured vendor adapter, by name (the manual flow needs no configuration)."""
    return {c.name: _adapter(c, settings.kyc_http_timeout) for c in settings.kyc_providers}


def _adapter(config: KycProviderSettings, timeout: float) -> KycProvider:
    adapter: KycProvider = ADAPTERS[config.name](config, timeout=timeout)
    return adapter
