"""Airlock gateway: the HTTP surfaces, services and backends around the policy engine."""
