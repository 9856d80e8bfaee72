"""What training and evaluation share above the model: losses, metrics, the training step and its resumable state,
validation, scoring, inference on images of any size, and the pictures (panels, curves, overlays)."""
