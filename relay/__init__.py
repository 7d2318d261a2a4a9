"""Postgres change relay: Supabase-Realtime-compatible streaming of committed row changes."""

__version__ = "0.1.0"
