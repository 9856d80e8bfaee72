"""The bottom layer: errors for the user, safe file writes, devices, command-line settings and signals.

Every other package may import `common`; `common` imports none of them.
"""
