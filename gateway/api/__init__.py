"""HTTP surfaces, one blueprint per audience; this list is the whole surface."""

from gateway.api import access, blobs, compliance, health, hub, inference, publisher, webhooks

BLUEPRINTS = (
    health.bp,  # /healthz, /readyz, /api/v1/openapi.json
    publisher.bp,  # /api/v1: models, uploads, commits, policies, grants, freezes
    access.bp,  # /api/v1: tiers, requests, reviews, own grants, tokens, KYC (manual, start)
    compliance.bp,  # /api/v1/audit
    hub.bp,  # Hugging Face Hub compatible reads: /api/models/..., /{org}/{name}/resolve/...
    inference.bp,  # OpenAI compatible: /v1/models, /v1/chat/completions, /v1/completions, ...
    blobs.bp,  # /blobs/...: signed, expiring, Range-capable file URLs
    webhooks.bp,  # /webhooks/kyc/<provider>: signed KYC provider callbacks
)
