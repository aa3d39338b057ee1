"""Business rules: validation, permissions beyond the declared policy, and the steps of
each change in one transaction (always with its audit event)."""
