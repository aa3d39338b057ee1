"""Server interceptors, outermost first: errors → audit → auth → org context.

Each applies to the spoke.v1 methods only (health and reflection pass untouched) and
reads what it enforces from the method's declared ``spoke.v1.policy``.
"""
