"""Identity: API tokens, scopes and the principal a request acts as."""
