"""Real systems the integration tests start and stop: PostgreSQL (and later Tryton, Redmine)."""
