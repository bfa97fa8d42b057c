"""Shared report parts: the Jinja2 environment, number filters, the base layout and the figures."""
