"""The Ray scale-out backend on a real two-node Ray cluster, joined by address.

``ray.cluster_utils.Cluster`` (Ray's own test helper) starts a head node and one worker node on
this machine, each its own raylet and object store with 1 CPU, so a job's two actors land on
different nodes. The daemon's code is then pointed at the cluster only through
``ScaleoutSettings.ray_address``: ``connect`` must join it, ``vector_mode`` must pick the object
store (two alive nodes), and embedding and scoring must give what the in-process path gives.

The cluster's session files and its address file live in a private ``RAY_TMPDIR``, so a plain
``ray.init()`` elsewhere on this machine (another test module, another engineer's run) does not
find and join it. Startup takes about 10 s on 2 cores; the module about half a minute.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.errors import ConfigError
from daemon.scaleout_ray import connect, embed_missing_ray, shortlist_ray, vector_mode
from daemon.scoring import SCORING_DTYPE, shortlist
from daemon.settings import ScaleoutSettings
from models._types import Float32Array
from models.cache import embed_missing
from models.hashing import HashingEmbedder
from models.head_weights import export_head
from strategies import Prefilter
from tests.unit.daemon.test_scaleout_ray import new_cache, scoring_setup, texts, vectors

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:
    ray = None

NODE_OBJECT_STORE_BYTES = 128 * 1024 * 1024
# actors=None: one per cluster CPU, so each job runs one actor on each 1-CPU node
CLUSTER_SETTINGS = ScaleoutSettings(backend="ray", encode_batch_rows=64, score_chunk_rows=200)


@dataclass(frozen=True, slots=True)
class TwoNodes:
    """A running two-node cluster: its address, its node ids, and where its actors report their node."""

    address: str
    node_ids: frozenset[str]
    reports: Path

    def settings(self) -> ScaleoutSettings:
        return CLUSTER_SETTINGS.model_copy(update={"ray_address": self.address})


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    if ray is None:
        pytest.skip("RAY CLUSTER NOT TESTED: `ray` is not importable; install it with pip install 'labelloop[ray]'")
    if ray.is_initialized():  # connect() would reuse that connection instead of joining the cluster
        pytest.fail("ray is still initialised by an earlier test module; it must call ray.shutdown()")
    temp_root = Path(tempfile.mkdtemp(prefix="llray-"))  # short: Ray's socket paths must fit in 107 bytes
    this_module = sys.modules[__name__]
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("RAY_TMPDIR", str(temp_root))
            env.delenv("RAY_ADDRESS", raising=False)
            # The nodes, their workers and this driver must agree on token auth. Pin it: a local
            # ray.init() (another module) leaves RAY_AUTH_MODE=token in os.environ, and "auto"
            # turns it on when ~/.ray/auth_token exists; Cluster's nodes follow neither, and a
            # driver that disagrees with them loses its objects ("owner has exited").
            env.setenv("RAY_AUTH_MODE", "token")
            env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
            env.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
            reset_ray_auth()
            with running_cluster() as cluster:
                # the reporting helpers below run in the actors: ship them by value, as a test
                # module need not be importable on a Ray node
                ray.cloudpickle.register_pickle_by_value(this_module)
                try:
                    reports = temp_root / "reports"
                    reports.mkdir()
                    node_ids = frozenset(node.node_id for node in cluster.list_all_nodes())
                    yield TwoNodes(address=cluster.address, node_ids=node_ids, reports=reports)
                finally:
                    ray.shutdown()  # the connection connect() made; later modules start their own
                    ray.cloudpickle.unregister_pickle_by_value(this_module)
    finally:
        reset_ray_auth()  # back to what the restored environment says
        shutil.rmtree(temp_root, ignore_errors=True)


@contextmanager
def running_cluster() -> Iterator[Any]:
    """A head node and one worker node, 1 CPU each; every process stopped on exit."""
    cluster = Cluster(shutdown_at_exit=True)  # and a reaper kills the nodes if pytest dies
    try:
        cluster.add_node(num_cpus=1, object_store_memory=NODE_OBJECT_STORE_BYTES, include_dashboard=False)
        cluster.add_node(num_cpus=1, object_store_memory=NODE_OBJECT_STORE_BYTES)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def reset_ray_auth() -> None:
    """Make this process re-read the RAY_AUTH_* variables (Ray caches them; older Rays have no token auth)."""
    try:
        from ray._private.authentication_test_utils import reset_auth_token_state
    except ImportError:
        return
    reset_auth_token_state()


@pytest.fixture
def whole_pools(two_nodes: TwoNodes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold a job's first block until its whole actor pool is up, so a slow-starting node still gets blocks.

    Ray Data then hands each actor at most 2 blocks at a time, so both nodes get some of the
    first 4; without this, a job can finish on the first actor up before the other one starts.
    """
    from ray.data import DataContext

    connect(two_nodes.settings())
    # each job copies this process's current DataContext
    monkeypatch.setattr(DataContext.get_current(), "wait_for_min_actors_s", 60, raising=False)


def report_node(reports: Path, job: str) -> None:
    """Leave a ``<job>-<node id>-<pid>`` file when called inside a Ray actor (all nodes share this disk)."""
    context = ray.get_runtime_context()
    if context.get_actor_id() is not None:  # not the coordinator, which also builds an embedder
        (reports / f"{job}-{context.get_node_id()}-{os.getpid()}").touch()


def nodes_that_ran(reports: Path, job: str) -> set[str]:
    return {path.name.split("-")[1] for path in reports.glob(f"{job}-*")}


class ReportingHashingEmbedder(HashingEmbedder):
    """A :class:`HashingEmbedder` (same model key, same vectors) that reports the node of each batch."""

    def __init__(self, dim: int, *, reports: Path) -> None:
        super().__init__(dim)
        self.reports = reports

    def encode(self, texts: Sequence[str]) -> Float32Array:
        report_node(self.reports, "encode")
        return super().encode(texts)


def reporting_scorer(score: Callable[[Any], Any], reports: Path, proba: Any) -> Any:
    report_node(reports, "score")
    return score(proba)


def joined(cluster: TwoNodes) -> None:
    """Check that this process is connected to ``cluster``, not to a local instance."""
    assert ray.is_initialized()
    assert ray.get_runtime_context().gcs_address == cluster.address
    assert {node["NodeID"] for node in ray.nodes() if node["Alive"]} == cluster.node_ids


def test_a_ray_client_address_is_refused_before_connecting(tmp_path: Path) -> None:
    """Refuse ``ray://``: over Ray Client every Ray Data job fails.

    Seen on this module's cluster with a Ray Client server on the head (Ray 2.60): the first
    ``iter_batches`` raised ``AttributeError: 'Worker' object has no attribute 'core_worker'``;
    Ray's maintainers say Ray Data does not support Ray Client (ray-project/ray#42739).
    """
    client = CLUSTER_SETTINGS.model_copy(update={"ray_address": "ray://head:10001"})
    with pytest.raises(ConfigError, match=r"Ray Client.*ray start --address=<head>:6379.*'auto'"):
        connect(client)
    with new_cache(tmp_path, HashingEmbedder(16)) as cache, pytest.raises(ConfigError, match="Ray Client"):
        embed_missing_ray(functools.partial(HashingEmbedder, 16), cache, ["a text"], settings=client)


def test_connect_joins_the_cluster_by_address_and_uses_the_object_store(two_nodes: TwoNodes) -> None:
    settings = two_nodes.settings()
    connected = connect(settings)
    joined(two_nodes)
    assert connected.cluster_resources()["CPU"] == 2.0
    assert vector_mode(connected, settings) == "object_store"
    assert connect(settings) is connected  # the connection is kept


def test_auto_joins_the_cluster_this_machine_is_a_node_of(two_nodes: TwoNodes) -> None:
    ray.shutdown()  # a new daemon process: no connection yet
    settings = two_nodes.settings().model_copy(update={"ray_address": "auto"})
    connected = connect(settings)
    joined(two_nodes)
    assert vector_mode(connected, settings) == "object_store"


@pytest.mark.usefixtures("whole_pools")
def test_embedding_on_two_nodes_equals_in_process(two_nodes: TwoNodes, tmp_path: Path) -> None:
    pool = texts(600, seed=4)
    factory = functools.partial(ReportingHashingEmbedder, 32, reports=two_nodes.reports)
    with new_cache(tmp_path / "ray", factory()) as there, new_cache(tmp_path / "local", factory()) as here:
        got = vectors(there, embed_missing_ray(factory, there, pool, settings=two_nodes.settings(),
                                               store_chunk_rows=128))
        expected = vectors(here, embed_missing(HashingEmbedder(32), here, pool))
        assert len(there) == len(set(pool))
    joined(two_nodes)
    np.testing.assert_array_equal(got, expected)
    assert nodes_that_ran(two_nodes.reports, "encode") == two_nodes.node_ids


@pytest.mark.usefixtures("whole_pools")
def test_scoring_on_two_nodes_equals_in_process(
    two_nodes: TwoNodes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, rows, classifier, score = scoring_setup(tmp_path)
    plan = Prefilter(n_top=120, n_sample=150)
    here_rng, there_rng = np.random.default_rng(11), np.random.default_rng(11)
    as_the_daemon = functools.partial(classifier.predict_proba, dtype=SCORING_DTYPE)
    expected = shortlist(cache, rows, plan, predict_proba=as_the_daemon, score=score, rng=here_rng, chunk_rows=1000)
    on_workers = functools.partial(reporting_scorer, score, two_nodes.reports)
    with caplog.at_level("INFO", logger="daemon.scaleout_ray"):
        got = shortlist_ray(cache, rows, plan, head=export_head(classifier), score=on_workers, rng=there_rng,
                            settings=two_nodes.settings())
    cache.close()
    joined(two_nodes)
    assert "(object store)" in caplog.text  # vectors="auto" chose the object store on two nodes
    assert expected.proba is not None and got.proba is not None
    np.testing.assert_array_equal(got.positions, expected.positions)
    np.testing.assert_allclose(got.proba, expected.proba, rtol=0, atol=1e-12)
    assert there_rng.random() == here_rng.random()  # stage (b) draws the same numbers next
    assert nodes_that_ran(two_nodes.reports, "score") == two_nodes.node_ids
