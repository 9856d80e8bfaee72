"""The bottom layer: errors for the user, safe file writes, run folders and their locks, devices, processes under
torchrun, command-line settings, signals and progress lines.

Every other package may import `common`; `common` imports none of them.
"""
