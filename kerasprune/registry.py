"""A tiny name -> factory registry whose errors list the valid names."""
from kerasprune.errors import KerasPruneError


class Registry(dict):
    """Maps snake_case names (also the CLI words) to factories."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def register(self, name):
        def decorator(fn):
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = fn
            return fn

        return decorator

    def get_or_raise(self, name):
        if name not in self:
            valid = ", ".join(sorted(self))
            raise KerasPruneError(f"unknown {self.kind} {name!r}; valid names are: {valid}")
        return self[name]
