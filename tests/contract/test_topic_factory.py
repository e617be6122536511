"""kipc.Topic(url, **opts): one entry point for pub/sub, dispatched on the scheme (kipc.topics)."""

from __future__ import annotations

import importlib
import sys

import pytest

import kipc
from kipc import testing, topics
from kipc.transports.nats.topic import Topic as NatsTopic
from kipc.transports.unix_topic import UnixTopic


def test_the_lazy_export_is_the_factory() -> None:
    assert kipc.Topic is topics.Topic
    assert topics.topic_class("unix") is UnixTopic
    assert topics.topic_class("nats") is NatsTopic


def test_unix_dispatch_and_the_common_shape() -> None:
    url = f"unix://{testing.unique_name('topic')}"
    with kipc.Topic(url, create=True, subscribe=False) as pub, kipc.Topic(url) as sub:
        assert type(pub) is UnixTopic and type(sub) is UnixTopic
        for end in (pub, sub):
            assert isinstance(end, kipc.Channel)
            assert end.dropped == 0
        pub.send(b"through the factory")
        assert sub.recv(timeout=5) == b"through the factory"


def test_nats_dispatch(nats_url: str) -> None:
    url = f"{nats_url}/{testing.unique_name('topic')}"
    with kipc.Topic(url, create=True, subscribe=False) as pub, kipc.Topic(url) as sub:
        assert type(pub) is NatsTopic and type(sub) is NatsTopic  # create= means nothing on a broker
        pub.send(b"via nats")
        assert sub.recv(timeout=5) == b"via nats"


def test_ring_dispatch_follows_the_ring_topic_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the module (a build before the ring topic, or this branch alone): Unsupported naming the scheme.
    monkeypatch.setitem(sys.modules, "kipc.transports.ring_topic", None)  # the import then fails
    with pytest.raises(kipc.Unsupported, match=r"ring://"):
        kipc.Topic(f"ring://{testing.unique_name('topic')}", create=True, subscribe=False)
    monkeypatch.undo()
    try:
        mod = importlib.import_module("kipc.transports.ring_topic")
    except ModuleNotFoundError:
        with pytest.raises(kipc.Unsupported, match=r"ring://"):
            topics.topic_class("ring")
    else:
        assert topics.topic_class("ring") is mod.RingTopic


def test_unknown_scheme_and_options_name_the_valid_ones(nats_url: str) -> None:
    with pytest.raises(kipc.InvalidArgument, match=r"nats://, unix://, ring://"):
        kipc.Topic("tcp://127.0.0.1:9/x")
    with pytest.raises(kipc.InvalidArgument, match=r"'colour'.*valid options: allow_uids, batch, codec, create"):
        kipc.Topic("unix://x", colour="red")
    with pytest.raises(kipc.InvalidArgument, match=r"'colour'.*valid options:.*pending_limit.*servers"):
        kipc.Topic(f"{nats_url}/x", colour="red")  # refused before connecting
    with pytest.raises(kipc.InvalidArgument):
        kipc.Topic("nats://127.0.0.1:9/x", create="yes")
    with pytest.raises(kipc.InvalidArgument):
        kipc.Topic("no-scheme")
