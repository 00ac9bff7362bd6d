"""HTTP API: one router per resource; dependencies in deps.py; errors mapped in errors.py."""
