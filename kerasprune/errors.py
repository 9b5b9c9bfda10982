"""The error users see: one clear line, never a traceback from deep inside TensorFlow."""


class KerasPruneError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""
