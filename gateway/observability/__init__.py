"""Operations: Prometheus metrics, JSON logs and readiness checks, free of any web framework."""
