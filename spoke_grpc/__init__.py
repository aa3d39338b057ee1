"""Spoke multi-tenancy core: a gRPC service for organizations, members, quotas and modules."""

__version__ = "0.1.0"
