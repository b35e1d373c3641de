"""Bases (the registry and loader) and the bundled tiny world."""
