"""Metadata engines."""
