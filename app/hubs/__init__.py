"""Hubs (tenants) and their API keys."""
