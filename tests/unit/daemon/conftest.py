from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from daemon.store import make_engine, set_value


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'state' / 'labelloop.db'}")
    yield engine
    engine.dispose()


def set_classes(engine: Engine, classes: list[str]) -> None:
    with Session(engine) as session:
        set_value(session, "classes", json.dumps(classes))
        session.commit()
