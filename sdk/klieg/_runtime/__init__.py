"""What runs inside an app env: load a revision's code, run setup(), serve calls over IPC."""
