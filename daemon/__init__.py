"""The imperative shell of labelloop: store, stages, scheduler, CLI. Nothing imports it."""

__all__: list[str] = []
