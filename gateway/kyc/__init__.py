"""KYC providers behind one adapter interface; the manual provider is built in."""

from gateway.kyc.base import KycFacts, KycProvider
from gateway.kyc.manual import ManualProvider

__all__ = ["KycFacts", "KycProvider", "ManualProvider"]
