"""The run: config resolution into specs, the run record, the training loop, checkpoint
evaluation, cross-validation, prediction and export. Commands sit above it."""
