"""KYC providers behind one adapter interface; the manual provider is built in."""

from gateway.kyc.base import KycFacts, KycProvider, KycSession, KycStatus, WebhookEvent
from gateway.kyc.manual import ManualProvider

__all__ = ["KycFacts", "KycProvider", "KycSession", "KycStatus", "ManualProvider", "WebhookEvent"]
