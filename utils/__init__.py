"""Shared helpers: loss, metrics, evaluation, visualisation, configuration, devices and safe file writes."""
