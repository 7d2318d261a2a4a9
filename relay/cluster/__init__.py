"""Cluster mode (``RELAY_REDIS_URL``): many relay processes behind one slot; see docs/scale-out.md."""
